"""The stem's K walk as filter-row strips: the gathered walk for an ungrouped, undilated
convolution whose filter row (KW taps x C_in channels) fits one BLOCK_K step."""
import triton
import triton.language as tl

from .dot import accumulate


@triton.jit
def walk_strips(acc, x_ptr, w_ptr, img, ih0, iw0, m_mask, co, n_mask,
                H: tl.constexpr, W: tl.constexpr, C_in: tl.constexpr, C_out: tl.constexpr,
                KH: tl.constexpr, KW: tl.constexpr, BLOCK_K: tl.constexpr,
                DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, SWAP_AB: tl.constexpr):
    """The walk as KH contiguous strips: in NHWC the KW taps x C_in channels of one filter row
    are KW*C_in neighbouring elements (21 for 7x7 over RGB, 28 over RGB padded to 4), and so
    are their packed weight rows.  One step per filter row; the column masks (image border,
    strip length) are the same for every row and computed once; no division in the loop."""
    strip: tl.constexpr = KW * C_in
    offs_k = tl.arange(0, BLOCK_K)
    j_ok = offs_k < strip
    col_ok = (m_mask[:, None] & j_ok[None, :]
              & ((iw0[:, None] + (offs_k // C_in)[None, :]).to(tl.uint32) < W))
    x_row = ((img * H + ih0) * W + iw0) * C_in
    w_strip = offs_k[:, None] * C_out + co[None, :]
    for kh in range(0, KH):
        row_ok = (ih0 + kh).to(tl.uint32) < H
        a = tl.load(x_ptr + (x_row + kh * W * C_in)[:, None] + offs_k[None, :],
                    mask=col_ok & row_ok[:, None], other=0.0)
        b = tl.load(w_ptr + w_strip + kh * strip * C_out,
                    mask=j_ok[:, None] & n_mask[None, :], other=0.0)
        acc = accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    return acc
