"""The fused shortcut's K walk: a 1x1 convolution of the block input (the downsample branch),
accumulated into the main convolution's tile so its output never touches memory."""
import triton
import triton.language as tl

from .dot import accumulate


@triton.jit
def walk_shortcut(acc, xs_ptr, ws_ptr, img, oh, ow, m_mask, co, n_mask, c_lo, c_hi,
                  HS: tl.constexpr, WS: tl.constexpr, C_short: tl.constexpr,
                  C_out: tl.constexpr, STRIDE_SHORT: tl.constexpr, SHORTCUT_POOL: tl.constexpr,
                  BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  UPCAST_DOT: tl.constexpr, SWAP_AB: tl.constexpr):
    """Input channels ``[c_lo, c_hi)`` of the shortcut: the window at stride STRIDE_SHORT, no
    padding, always inside the image.  With SHORTCUT_POOL the window is 2x2 and averaged
    first (ResNet-D's AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)): on odd sizes
    the last row/column of windows hangs over the border and averages the 1 or 2 pixels
    inside."""
    offs_k = tl.arange(0, BLOCK_K)
    s_off = ((img * HS + oh * STRIDE_SHORT) * WS + ow * STRIDE_SHORT) * C_short
    if SHORTCUT_POOL:
        in_h = oh * STRIDE_SHORT + 1 < HS
        in_w = ow * STRIDE_SHORT + 1 < WS
        # 1/count is 1, 1/2 or 1/4: exact in every dtype.
        inv_count = 1.0 / ((1 + in_h.to(tl.float32)) * (1 + in_w.to(tl.float32)))
        # Pipelining stages all four window loads through shared memory: 2 stages keep the
        # widest fp16 tile within sm_80's shared memory (docs/inspect.md).
        SHORTCUT_STAGES: tl.constexpr = 2
    else:
        SHORTCUT_STAGES: tl.constexpr = None  # the config's num_stages
    for c0 in tl.range(c_lo, c_hi, BLOCK_K, num_stages=SHORTCUT_STAGES):
        c = c0 + offs_k
        c_mask = c < C_short
        a_ptrs = xs_ptr + s_off[:, None] + c[None, :]
        a_mask = m_mask[:, None] & c_mask[None, :]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        if SHORTCUT_POOL:
            # Sum in fp32 and round the average once to the input dtype, as eager's pooling
            # layer does before its 1x1 convolution.
            a = (a.to(tl.float32)
                 + tl.load(a_ptrs + C_short, mask=a_mask & in_w[:, None], other=0.0)
                 + tl.load(a_ptrs + WS * C_short, mask=a_mask & in_h[:, None], other=0.0)
                 + tl.load(a_ptrs + (WS + 1) * C_short,
                           mask=a_mask & (in_h & in_w)[:, None], other=0.0))
            a = (a * inv_count[:, None]).to(xs_ptr.dtype.element_ty)
        b = tl.load(ws_ptr + c[:, None] * C_out + co[None, :],
                    mask=c_mask[:, None] & n_mask[None, :], other=0.0)
        acc = accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    return acc
