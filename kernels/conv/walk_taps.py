"""The tap-major K walk by pointers: for each filter tap, BLOCK_K input channels at a time.

One flat loop over (tap, channel block), in the order of nested loops over kh, kw and
channels: a single software-pipelined loop whose loads stay in flight across taps (unrolled
per-tap loops gave KH*KW pipelined copies, each with its own prologue, and spilled).
"""
import triton
import triton.language as tl

from .dot import accumulate


@triton.jit
def walk_taps(acc, x_ptr, w_ptr, img, ih0, iw0, m_mask, co, n_mask, group, step_lo, step_hi,
              H: tl.constexpr, W: tl.constexpr, C_in: tl.constexpr, C_out: tl.constexpr,
              KW: tl.constexpr, PAD: tl.constexpr, DIL: tl.constexpr, GROUPS: tl.constexpr,
              BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr,
              RECOMPUTE_TAPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
              UPCAST_DOT: tl.constexpr, SWAP_AB: tl.constexpr):
    """K steps ``[step_lo, step_hi)`` of the main convolution into ``acc``.

    Hoisted (default): each tap adds a scalar offset to per-row base offsets computed once;
    rows are masked by one unsigned compare per side, input channels only where BLOCK_K does
    not divide them, output channels only where BLOCK_N does not (``EVEN_N`` false).
    ``RECOMPUTE_TAPS``: coordinates, bounds and offsets recomputed every step, channel masks
    always (fewer values live across the loop, more instructions per step)."""
    cin_g: tl.constexpr = C_in // GROUPS
    c_steps: tl.constexpr = (cin_g + BLOCK_K - 1) // BLOCK_K
    # Tiles that divide the channels need no channel masks (every ResNet layer but the stem).
    EVEN_K: tl.constexpr = cin_g % BLOCK_K == 0
    offs_k = tl.arange(0, BLOCK_K)
    x_base = ((img * H + ih0) * W + iw0) * C_in + group * cin_g
    w_base = offs_k[:, None] * C_out + co[None, :]
    for step in range(step_lo, step_hi):
        tap = step // c_steps
        c0 = (step % c_steps) * BLOCK_K
        kh = tap // KW
        kw = tap % KW
        if not RECOMPUTE_TAPS:
            if PAD == 0:
                # Without padding every tap of a valid output pixel is inside the image.
                row_mask = m_mask
            else:
                # One unsigned compare per side: a negative coordinate wraps to a huge one.
                row_mask = (m_mask & ((ih0 + kh * DIL).to(tl.uint32) < H)
                            & ((iw0 + kw * DIL).to(tl.uint32) < W))
            a_ptrs = x_ptr + (x_base + (kh * DIL * W + kw * DIL) * C_in + c0)[:, None] \
                + offs_k[None, :]
            b_ptrs = w_ptr + w_base + (tap * cin_g + c0) * C_out
            if EVEN_K:
                a = tl.load(a_ptrs, mask=row_mask[:, None], other=0.0)
                if EVEN_N:
                    b = tl.load(b_ptrs)
                else:
                    b = tl.load(b_ptrs, mask=n_mask[None, :], other=0.0)
            else:
                c_mask = c0 + offs_k < cin_g
                a = tl.load(a_ptrs, mask=row_mask[:, None] & c_mask[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=c_mask[:, None] & n_mask[None, :], other=0.0)
        else:
            c = c0 + offs_k
            c_mask = c < cin_g
            ih = ih0 + kh * DIL
            iw = iw0 + kw * DIL
            row_mask = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            row_off = ((img * H + ih) * W + iw) * C_in + group * cin_g
            a = tl.load(x_ptr + row_off[:, None] + c[None, :],
                        mask=row_mask[:, None] & c_mask[None, :], other=0.0)
            b = tl.load(w_ptr + (tap * cin_g + c)[:, None] * C_out + co[None, :],
                        mask=c_mask[:, None] & n_mask[None, :], other=0.0)
        acc = accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    return acc
