"""``persistent_matmul``: checks its operands and launches the reference GEMM."""
import contextlib

import torch

from .. import runtime
from .kernel import persistent_matmul_kernel

# The tile of Triton's persistent-matmul tutorial for fp16 on Hopper, and its group size.
TILE = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3)
# Under the interpreter: small tiles and few programs, so that odd sizes leave partial tiles
# and every program walks several tiles.
INTERPRETER_TILE = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, GROUP_M=2)
INTERPRETER_PROGRAMS = 3


def persistent_matmul(a, b, flatten=False):
    """``a @ b`` for fp16/bf16 matrices ``a`` [M, K] and ``b`` [K, N] on one device, both
    contiguous, K and N multiples of 8 (TMA needs 16-byte row strides).  ``flatten``: the
    tile loop and the K loop pipelined as one.  Returns a new [M, N] tensor in their dtype."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor")
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"{name} has dtype {t.dtype}; expected float16 or bfloat16")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    m, k = a.shape
    if b.shape[0] != k or b.dtype != a.dtype or b.device != a.device:
        raise ValueError(f"b must be [{k}, N] in {a.dtype} on {a.device}, got "
                         f"{tuple(b.shape)} {b.dtype} on {b.device}")
    n = b.shape[1]
    if k % 8 or n % 8:
        raise ValueError(f"K ({k}) and N ({n}) must be multiples of 8 (16-byte TMA rows)")
    c = torch.empty((m, n), dtype=a.dtype, device=a.device)
    if m == 0:
        return c
    if runtime.INTERPRETED:
        tile, programs = INTERPRETER_TILE, INTERPRETER_PROGRAMS
    else:
        runtime.ensure_allocator()
        tile, programs = TILE, runtime.sm_count(a.device)
    tiles = -(-m // tile["BLOCK_M"]) * -(-n // tile["BLOCK_N"])
    programs = min(programs, tiles)
    with runtime.INTERPRETER_LOCK if runtime.INTERPRETED else contextlib.nullcontext():
        persistent_matmul_kernel[(programs,)](
            a, b, c, m, N=n, K=k, PROGRAMS=programs, FLATTEN=flatten,
            UPCAST_DOT=runtime.INTERPRETED and a.dtype == torch.bfloat16, **tile)
    return c
