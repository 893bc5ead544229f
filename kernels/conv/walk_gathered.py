"""The gathered K walk, for convolutions with few input channels per group (narrow groups,
the RGB stem), where tap-major BLOCK_K >= 16 tiles would be mostly empty: K =
KH*KW*C_in/groups is walked as one flat range."""
import triton
import triton.language as tl

from .dot import accumulate


@triton.jit
def walk_gathered(acc, x_ptr, w_ptr, img, ih0, iw0, m_mask, co, n_mask, group,
                  H: tl.constexpr, W: tl.constexpr, C_in: tl.constexpr, C_out: tl.constexpr,
                  KH: tl.constexpr, KW: tl.constexpr, DIL: tl.constexpr, GROUPS: tl.constexpr,
                  BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  UPCAST_DOT: tl.constexpr, SWAP_AB: tl.constexpr):
    """Each k of a BLOCK_K step decoded into (kh, kw, ci) and gathered with its own mask."""
    cin_g: tl.constexpr = C_in // GROUPS
    k_total: tl.constexpr = KH * KW * cin_g
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, k_total, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < k_total
        ci = k % cin_g
        tap = k // cin_g
        ih = ih0[:, None] + (tap // KW)[None, :] * DIL
        iw = iw0[:, None] + (tap % KW)[None, :] * DIL
        a_mask = (m_mask[:, None] & k_mask[None, :]
                  & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
        a_off = ((img[:, None] * H + ih) * W + iw) * C_in + group * cin_g + ci[None, :]
        a = tl.load(x_ptr + a_off, mask=a_mask, other=0.0)
        b = tl.load(w_ptr + k[:, None] * C_out + co[None, :],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    return acc
