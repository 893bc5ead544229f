"""``scale_add_act``: checks its tensors and launches the scale-add kernel."""
import torch
import triton

from ..checks import check_activation, check_launch_input
from ..runtime import INTERPRETED
from .kernel import scale_add_act_kernel

# Elements per program: under the interpreter few, large programs are what is fast (it pays
# per program); on a GPU a 1-D elementwise kernel of 1,024 elements per 4 warps keeps loads
# 16 bytes wide and the grid large.
_BLOCK = 65536 if INTERPRETED else 1024


def scale_add_act(y, gate, residual, *, relu=True):
    """``act(y * gate + residual)`` with ``gate`` broadcast over the pixels.

    y, residual: [N, C, H, W], same dtype and device (made channels_last; free if they are).
    gate:        [N, C, 1, 1] or [N, C], same dtype and device.
    Returns a new channels_last [N, C, H, W] tensor.
    """
    check_launch_input("y", y)
    check_activation("residual", residual, y.device, y.dtype)
    n, c, h, w = y.shape
    if residual.shape != y.shape:
        raise ValueError(f"residual has shape {tuple(residual.shape)}, y has {tuple(y.shape)}")
    if not isinstance(gate, torch.Tensor):
        raise TypeError(f"gate must be a torch.Tensor, got {type(gate).__name__}")
    if gate.shape not in ((n, c), (n, c, 1, 1)):
        raise ValueError(f"gate must have shape {(n, c, 1, 1)} or {(n, c)}, got "
                         f"{tuple(gate.shape)}")
    if gate.dtype != y.dtype or gate.device != y.device:
        raise ValueError(f"gate is {gate.dtype} on {gate.device}; y is {y.dtype} on {y.device}")
    y = y.contiguous(memory_format=torch.channels_last)
    residual = residual.contiguous(memory_format=torch.channels_last)
    gate = gate.reshape(n, c).contiguous()
    out = torch.empty_like(y, memory_format=torch.channels_last)
    total = y.numel()
    if total == 0:
        return out
    scale_add_act_kernel[(triton.cdiv(total, _BLOCK),)](
        y, gate, residual, out, total, HWC=h * w * c, C=c, RELU=relu,
        INDEX_64=total + _BLOCK >= 2 ** 31, BLOCK=_BLOCK)
    return out
