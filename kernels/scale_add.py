"""``act(y * gate[n, c] + residual)`` in one pass over NHWC activations.

The end of a squeeze-and-excitation (SE / ECA) residual block: the attention's per-channel
gate scales the last convolution's output, the shortcut is added and the activation applied.
Eager PyTorch runs that as three passes over the block's output (multiply, add, ReLU); this
kernel reads ``y`` and ``residual`` once and writes the output once.  It computes in fp32 and
rounds once at the store.
"""
import torch
import triton
import triton.language as tl

from .fused_conv import INTERPRETED, check_activation, check_launch_input

# Elements per program: under the interpreter few, large programs are what is fast (it pays
# per program); on a GPU a 1-D elementwise kernel of 1,024 elements per 4 warps keeps loads
# 16 bytes wide and the grid large.
_BLOCK = 65536 if INTERPRETED else 1024


@triton.jit
def scale_add_act_kernel(
    y_ptr,      # [N, H, W, C]  the last convolution's output, NHWC contiguous
    gate_ptr,   # [N, C]        per-image, per-channel scale
    res_ptr,    # [N, H, W, C]  residual (the block's shortcut)
    out_ptr,    # [N, H, W, C]  output
    total,      # N*H*W*C
    HWC: tl.constexpr, C: tl.constexpr, RELU: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if INDEX_64:
        offs = offs.to(tl.int64)
    mask = offs < total
    # NHWC: the channel is the fastest index, the image the slowest.
    g_off = (offs // HWC) * C + offs % C
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc = y * g + r
    if RELU:
        # torch.relu keeps NaN; a plain maximum would turn it into 0.
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


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
