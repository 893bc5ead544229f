"""K walks whose tiles arrive by TMA (sm_90): stride-1, ungrouped convolutions.

Descriptors need 16-byte aligned bases and row strides (the launcher checks the bases) and,
on a GPU, an allocator for their global scratch (``kernels.runtime.ensure_allocator``).
They are made once per program (``tma_descriptors``), so a persistent program reuses them
for every tile it owns.  The packed weight is read as the matrix ``[KH*KW*C_in, C_out]``.
"""
import triton
import triton.language as tl

from .dot import accumulate


@triton.jit
def tma_descriptors(x_ptr, w_ptr, M, H: tl.constexpr, W: tl.constexpr, C_in: tl.constexpr,
                    C_out: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, KH: tl.constexpr,
                    KW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, PATCH_W: tl.constexpr):
    """(x's descriptor, the weight's): x as the GEMM's ``[M, C_in]`` (rows), or with
    PATCH_W as ``[N, H, W, C_in]`` in boxes of one PATCH_H x PATCH_W patch (patches)."""
    w_desc = tl.make_tensor_descriptor(w_ptr, shape=[KH * KW * C_in, C_out],
                                       strides=[C_out, 1], block_shape=[BLOCK_K, BLOCK_N])
    if PATCH_W > 0:
        x_desc = tl.make_tensor_descriptor(
            x_ptr, shape=[M // (OH * OW), H, W, C_in],
            strides=[H * W * C_in, W * C_in, C_in, 1],
            block_shape=[1, BLOCK_M // PATCH_W, PATCH_W, BLOCK_K])
    else:
        x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, C_in], strides=[C_in, 1],
                                           block_shape=[BLOCK_M, BLOCK_K])
    return x_desc, w_desc


@triton.jit
def walk_tma_rows(acc, x_desc, w_desc, pid_m, pid_n, step_lo, step_hi, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  UPCAST_DOT: tl.constexpr, SWAP_AB: tl.constexpr):
    """A 1x1 unpadded convolution over NHWC is a plain GEMM, activations ``[M, C_in]``: the
    zero fill past the tensor's end replaces the row and channel masks.  One tap, so a step
    is a channel block."""
    for step in range(step_lo, step_hi):
        a = x_desc.load([pid_m * BLOCK_M, step * BLOCK_K])
        b = w_desc.load([step * BLOCK_K, pid_n * BLOCK_N])
        acc = accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    return acc


@triton.jit
def walk_tma_patches(acc, x_desc, w_desc, img, patch_oh, patch_ow, pid_n, step_lo, step_hi,
                     C_in: tl.constexpr, KW: tl.constexpr, PAD: tl.constexpr,
                     DIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     UPCAST_DOT: tl.constexpr, SWAP_AB: tl.constexpr):
    """A patch tile (PATCH_H x PATCH_W output pixels of one image, top-left at ``patch_oh``,
    ``patch_ow``): each tap's activations are one box of the 4-D ``[N, H, W, C_in]``
    descriptor starting PAD pixels up and left, and TMA's zero fill outside the tensor
    (negative coordinates too) is the padding: no masks, no address arithmetic."""
    # A box past C_in would meet the next tap's weight rows.
    tl.static_assert(C_in % BLOCK_K == 0, "TMA patches: C_in a multiple of BLOCK_K")
    c_steps: tl.constexpr = C_in // BLOCK_K
    for step in range(step_lo, step_hi):
        tap = step // c_steps
        c0 = (step % c_steps) * BLOCK_K
        kh = tap // KW
        kw = tap % KW
        a = x_desc.load([img, patch_oh - PAD + kh * DIL, patch_ow - PAD + kw * DIL, c0])
        a = a.reshape(BLOCK_M, BLOCK_K)
        b = w_desc.load([tap * C_in + c0, pid_n * BLOCK_N])
        acc = accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    return acc
