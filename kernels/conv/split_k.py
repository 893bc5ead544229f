"""Split-K's second kernel: the sum of the partial tiles and the epilogue."""
import triton
import triton.language as tl

from .epilogue import bias_residual_act_store


@triton.jit
def split_k_epilogue_kernel(
    part_ptr,   # [SPLIT_K, M, C_out] fp32  partial sums from conv_bn_act_kernel
    bias_ptr,   # [C_out] fp32
    res_ptr,    # [M, C_out]                residual (if HAS_RESIDUAL)
    out_ptr,    # [M, C_out]                output (NHWC: M = N*OH*OW rows)
    M,
    C_out: tl.constexpr, SPLIT_K: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The slices are summed in their order, so the result does not depend on which program
    finished first (deterministic, no atomics); then the conv kernel's own epilogue."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C_out
    mask = (offs_m < M)[:, None] & n_mask[None, :]
    off = offs_m[:, None] * C_out + offs_n[None, :]
    acc = tl.load(part_ptr + off, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(part_ptr + s * M * C_out + off, mask=mask, other=0.0)
    bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0)
    bias_residual_act_store(acc, bias, res_ptr, None, out_ptr, off, mask, HAS_RESIDUAL, False,
                            RELU)
