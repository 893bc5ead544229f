"""``act(y * gate[n, c] + residual)`` in one pass over NHWC activations.

The end of a squeeze-and-excitation (SE / ECA) residual block: the attention's per-channel
gate scales the last convolution's output, the shortcut is added and the activation applied.
Eager PyTorch runs that as three passes over the block's output (multiply, add, ReLU); this
kernel reads ``y`` and ``residual`` once and writes the output once.  It computes in fp32 and
rounds once at the store.
"""
import triton
import triton.language as tl


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
