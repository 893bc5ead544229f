"""Implicit-GEMM convolution with a fused epilogue, over NHWC activations.

    out = act(conv(x, W) [+ conv1x1_s(xs, Ws)] + bias [+ residual])

GEMM view, per group g:  M = N*OH*OW output pixels,  N = C_out/groups channels,
K = KH*KW*C_in/groups.  Each program owns a BLOCK_M x BLOCK_N tile of the output and
accumulates in fp32; the epilogue adds the (folded BatchNorm) bias, the optional residual,
applies the optional ReLU, casts and stores once.  The optional shortcut is a second 1x1
convolution accumulated into the same tile (the downsample branch of a ResNet block), so
its output never touches memory; with ``SHORTCUT_POOL`` its input is first averaged over
2x2 windows (ResNet-D's average-pool downsample), also in registers.

Weights arrive packed as ``[KH*KW*C_in/groups, C_out]`` (row = (kh*KW + kw)*Cin_g + ci),
the order the K loop walks, so every weight tile is one contiguous strip of rows.

Two ways to walk K, chosen by the constexpr ``GATHER_K``:
  * tap-major (default): for each filter tap, BLOCK_K input channels at a time.  One bounds
    check per tap and row; the channel loads are contiguous NHWC vectors.
  * flattened (``GATHER_K``): K is walked as one range and each k is decoded into
    (kh, kw, ci).  Used when C_in per group is small (the 3-channel stem, ResNeXt groups),
    where the tap-major walk would leave most of every BLOCK_K >= 16 tile empty.

The tap-major walk has two bodies, chosen by the config's ``LEAN_K``: the lean one (per-tap
scalar offsets, mask-free tiles where the channel counts allow) and the first design's, kept
as an autotune candidate for padded convolutions (see ``candidates``).

Variants, each an autotune candidate next to the plain tiles and only where it applies
(``candidates``, at most 8 per launch; docs/inspect.md lists them):
  * ``SPLIT_K``: grids that leave SMs idle (batch 1) cut each tile's K steps into slices, one
    program each, writing fp32 partial tiles; ``split_k_epilogue_kernel`` sums them in a
    fixed order and runs the epilogue (deterministic, no atomics).
  * ``USE_TMA``: stride-1 convolutions load their tiles through TMA descriptors (sm_90): 1x1
    ones as rows of a GEMM; 3x3 ones with ``PATCH_W`` (a tile is a patch of output rows, one
    4-D box per tap, whose zero fill is the padding) and ``SWAP_AB`` (the transposed tile:
    pixels as the MMA's wide N dimension).
  * ``STRIP_K``: the flattened walk of a small-channel convolution as one contiguous strip per
    filter row (the stem); with the launcher option ``PAD_C`` the 3-channel input is first
    padded to 4 channels, so the strips load as 8-byte vectors.

The launcher picks the config: one large config under the interpreter, the tuner's choice
among ``candidates`` on a GPU (kernels/autotune.py), or ``default_config`` with
FUSEDRES_AUTOTUNE=0.
"""
import os
import threading

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import autotune


def _triton_interprets() -> bool:
    """Triton's own reading of TRITON_INTERPRET (it accepts 1/true/on/yes), so that this module
    and triton.jit, which hands out interpreted functions exactly when it is set at import,
    never disagree."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


INTERPRETED = _triton_interprets()

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Curated GPU configs, one list per activation element size; the tuner (kernels/autotune.py)
# tries the list for the input's dtype once per geometry and machine and stores the winner.
# tests/test_gpu_inspect.py checks that each compiles for sm_80 and sm_90 without register
# spills, within shared memory and on tensor cores, for every ResNet-18/50 specialisation in
# fp16 and fp32 (ResNet-34 has ResNet-18's geometries; ResNeXt-50 was last checked clean in
# fp16/bf16 on sm_90, while its grouped 3x3 convolutions spilled with some configs on sm_80
# and in fp32).  What drove the choices: registers.  128x128 tiles hold 128 accumulator
# registers per thread at 4 warps and spill (the 7x7 stem's gathered K walk and the fused
# shortcut first), so they get 8 warps.
# 128x64 with 4 warps is listed with BLOCK_K=32 only: with BLOCK_K=64 it needs up to 245
# registers on ResNet-50 and spills ~600 bytes on ResNeXt's grouped 3x3 convolutions.
# 64x64x64 runs 3 stages: at 4, ptxas spilled on sm_80 (3x3, stride 2).
# Both lists are checked with int32 offsets (INDEX_64 off: every ResNet launch at batch 256,
# 224x224); a launch over 2**31 elements compiles the int64 variant of the same configs,
# which may spill (slower, still correct).
HALF_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=2, num_stages=4),
]
# fp32 takes BLOCK_K=32 throughout, the same bytes per K step as the 2-byte list: BLOCK_K=64
# fp32 tiles need up to 144 KB of shared memory.  128x64x32 with 8 warps runs 3 stages: with
# int32 offsets ptxas holds it to 128 registers and, at 4 stages, spilled 8 bytes on sm_80
# (3x3 with the fused shortcut).
FLOAT_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=2, num_stages=4),
]
# A tile count that fills an H100/H200 (132 SMs) about twice: below it, smaller tiles win
# by giving every SM work.
_FULL_GRID = 256

# Below this many input channels per group the flattened K walk wastes less of each tile.
GATHER_K_BELOW = 16

# Activation offsets are computed in int32 while every activation tensor the kernel indexes
# has fewer elements than this, in int64 otherwise (the INDEX_64 constexpr).  A module-level
# name so the tests can lower it to run the int64 path on a small problem.
INDEX_32_LIMIT = 2 ** 31


@triton.jit
def _accumulate(acc, a, b, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
                SWAP_AB: tl.constexpr):
    """``acc + a @ b`` on tensor cores, or with SWAP_AB the transposed tile ``acc + b^T a^T``
    (the transposes are free: shared-memory descriptors).  The interpreter's tl.dot runs on
    NumPy, which has no bfloat16, so there (UPCAST_DOT) the tiles are widened to fp32 first."""
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if SWAP_AB:
        acc = tl.dot(tl.trans(b), tl.trans(a), acc, input_precision=DOT_PRECISION)
    else:
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def conv_bn_act_kernel(
    x_ptr,      # [N, H, W, C_in]            activations, NHWC contiguous
    w_ptr,      # [KH*KW*C_in/GROUPS, C_out] packed folded weight
    bias_ptr,   # [C_out] fp32               folded bias (plus the shortcut's)
    xs_ptr,     # [N, HS, WS, C_short]       shortcut input (if HAS_SHORTCUT)
    ws_ptr,     # [C_short, C_out]           packed folded shortcut weight (if HAS_SHORTCUT)
    res_ptr,    # [N, OH, OW, C_out]         residual (if HAS_RESIDUAL)
    out_ptr,    # [N, OH, OW, C_out]         output
    M,          # N*OH*OW: the only size that varies with the batch
    # The layer's shape is constexpr: every geometry is its own specialisation anyway (the
    # tuner keys on it), and constant sizes turn the K loop's divisions, products and bounds
    # into immediates.
    H: tl.constexpr, W: tl.constexpr, C_in: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
    C_out: tl.constexpr, HS: tl.constexpr, WS: tl.constexpr, C_short: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    DIL: tl.constexpr, GROUPS: tl.constexpr, STRIDE_SHORT: tl.constexpr,
    SHORTCUT_POOL: tl.constexpr,
    GATHER_K: tl.constexpr, HAS_SHORTCUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, LEAN_K: tl.constexpr,
    SPLIT_K: tl.constexpr = 1, USE_TMA: tl.constexpr = False, STRIP_K: tl.constexpr = False,
    SWAP_AB: tl.constexpr = False, PATCH_W: tl.constexpr = 0,
):
    cin_g: tl.constexpr = C_in // GROUPS
    cout_g: tl.constexpr = C_out // GROUPS
    # Tiles that divide the channel counts need no channel masks (every ResNet layer but the
    # stem): fewer instructions per K step.
    EVEN_K: tl.constexpr = cin_g % BLOCK_K == 0
    EVEN_N: tl.constexpr = cout_g % BLOCK_N == 0

    # Programs that share an M tile (the same input pixels) run next to each other, so the
    # input rows they all read stay in L2 while the N tiles sweep the (small) weight.
    pid = tl.program_id(0)
    num_n: tl.constexpr = (cout_g + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    pid_n = pid % num_n
    group = tl.program_id(1)

    if PATCH_W > 0:
        # Patch tiles: the program's BLOCK_M pixels are a PATCH_H x PATCH_W patch of one
        # image's output rows, so that at stride 1 each tap reads one box of the input.
        tl.static_assert(BLOCK_M % PATCH_W == 0 and not GATHER_K,
                         "patch tiles: whole rows of PATCH_W pixels, the tap-major K walk")
        PATCH_H: tl.constexpr = BLOCK_M // PATCH_W
        w_patches: tl.constexpr = (OW + PATCH_W - 1) // PATCH_W
        h_patches: tl.constexpr = (OH + PATCH_H - 1) // PATCH_H
        img = pid_m // (w_patches * h_patches)
        patch_oh = pid_m // w_patches % h_patches * PATCH_H
        patch_ow = pid_m % w_patches * PATCH_W
        oh = patch_oh + tl.arange(0, BLOCK_M) // PATCH_W
        ow = patch_ow + tl.arange(0, BLOCK_M) % PATCH_W
        m_mask = (oh < OH) & (ow < OW)
        offs_m = (img * OH + oh) * OW + ow
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        ow = offs_m % OW
        oh = (offs_m // OW) % OH
        img = offs_m // (OW * OH)
    # Every activation offset below derives from img (inputs) or rows (output, residual).
    # int64 only when a tensor reaches 2**31 elements (large batches of large images): a
    # 64-bit offset per element of a thread's tiles takes two registers.  In int32, an
    # unmasked offset and each partial sum of it stay below the tensor's size, so nothing
    # a load or store uses can overflow; masked lanes may wrap, but are never dereferenced.
    rows = offs_m
    if INDEX_64:
        img = img.to(tl.int64)
        rows = rows.to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < cout_g
    co = group * cout_g + offs_n
    offs_k = tl.arange(0, BLOCK_K)

    # Split-K (SPLIT_K > 1; grids that leave SMs idle, e.g. batch 1): program_id(2) takes one
    # contiguous slice of the K steps, the main loop's and then the shortcut's, and stores an
    # fp32 partial tile; split_k_epilogue_kernel sums the slices in a fixed order and runs the
    # epilogue.  The slices differ by at most one step (floor(s*steps/SPLIT_K) bounds), so any
    # count up to the step count works and none is empty: the launcher picks the fewest that
    # reach one program per SM.  With SPLIT_K == 1 the bounds are the constants they always were.
    c_steps: tl.constexpr = (cin_g + BLOCK_K - 1) // BLOCK_K
    main_steps: tl.constexpr = KH * KW * c_steps
    tl.static_assert(SPLIT_K == 1 or not GATHER_K, "split-K walks the tap-major K loop only")
    if SPLIT_K == 1:
        main_lo = 0
        main_hi = main_steps
        short_lo = 0
        short_hi = C_short
    else:
        short_steps: tl.constexpr = (C_short + BLOCK_K - 1) // BLOCK_K if HAS_SHORTCUT else 0
        all_steps: tl.constexpr = main_steps + short_steps
        tl.static_assert(SPLIT_K <= all_steps, "split-K: more slices than K steps")
        k_lo = tl.program_id(2) * all_steps // SPLIT_K
        k_hi = (tl.program_id(2) + 1) * all_steps // SPLIT_K
        main_lo = tl.minimum(k_lo, main_steps)
        main_hi = tl.minimum(k_hi, main_steps)
        short_lo = (tl.maximum(k_lo, main_steps) - main_steps) * BLOCK_K
        short_hi = (tl.maximum(k_hi, main_steps) - main_steps) * BLOCK_K

    if USE_TMA:
        # Tiles arrive by TMA (sm_90).  Needs 16-byte aligned bases and row strides (the
        # launcher checks the bases) and, on a GPU, an allocator for the descriptors' global
        # scratch.  Weights: [KH*KW*C_in, C_out].
        tl.static_assert(STRIDE == 1 and GROUPS == 1, "TMA tiles: stride-1 ungrouped only")
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[KH * KW * C_in, C_out],
                                           strides=[C_out, 1], block_shape=[BLOCK_K, BLOCK_N])
        if PATCH_W > 0:
            # Activations as [N, H, W, C_in]: a tap's box starts PAD pixels up and left of
            # the patch, and TMA's zero fill outside the tensor (negative coordinates too) is
            # the padding: no masks.  A box past C_in would meet the next tap's weight rows.
            tl.static_assert(cin_g % BLOCK_K == 0, "TMA patches: C_in a multiple of BLOCK_K")
            x_desc = tl.make_tensor_descriptor(
                x_ptr, shape=[M // (OH * OW), H, W, C_in], strides=[H * W * C_in, W * C_in, C_in, 1],
                block_shape=[1, PATCH_H, PATCH_W, BLOCK_K])
        else:
            # A 1x1 convolution over NHWC is a plain GEMM, activations [M, C_in]; the zero
            # fill past the tensor's end replaces the row and channel masks.
            tl.static_assert(KH == 1 and KW == 1 and PAD == 0,
                             "TMA rows: 1x1 unpadded convolutions (else patch tiles)")
            x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, C_in], strides=[C_in, 1],
                                               block_shape=[BLOCK_M, BLOCK_K])

    if SWAP_AB:
        # The transposed tile: output channels are the MMA's M (64 rows per warpgroup on
        # sm_90), pixels its wide N.
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # The top-left input pixel of each row's receptive field; a tap adds a scalar to it.
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD

    if GATHER_K and STRIP_K:
        # The stem's K walk as KH contiguous strips: in NHWC the KW taps x C_in channels of
        # one filter row are KW*C_in neighbouring elements (21 for 7x7 over RGB), and so are
        # their packed weight rows.  One step per filter row; the column masks (image border,
        # strip length) are the same for every row and computed once; no division in the loop.
        tl.static_assert(GROUPS == 1 and DIL == 1 and KW * C_in <= BLOCK_K,
                         "strip K walk: ungrouped, undilated, a filter row within BLOCK_K")
        strip: tl.constexpr = KW * C_in
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
            acc = _accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    elif GATHER_K:
        k_total: tl.constexpr = KH * KW * cin_g
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
            acc = _accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    else:
        # One flat loop over (tap, channel block), in the same order as nested loops over
        # kh, kw and channels: a single software-pipelined loop whose loads stay in flight
        # across taps.  Unrolled per-tap loops (tl.static_range) gave KH*KW pipelined copies,
        # each with its own prologue, and spilled registers at every tile size.
        x_base = ((img * H + ih0) * W + iw0) * C_in + group * cin_g
        w_base = offs_k[:, None] * C_out + co[None, :]
        for step in range(main_lo, main_hi):
            tap = step // c_steps
            c0 = (step % c_steps) * BLOCK_K
            kh = tap // KW
            kw = tap % KW
            if USE_TMA and PATCH_W > 0:
                a = x_desc.load([img, patch_oh - PAD + kh * DIL, patch_ow - PAD + kw * DIL, c0])
                a = a.reshape(BLOCK_M, BLOCK_K)
                b = w_desc.load([tap * cin_g + c0, pid_n * BLOCK_N])
            elif USE_TMA:
                a = x_desc.load([pid_m * BLOCK_M, c0])
                b = w_desc.load([c0, pid_n * BLOCK_N])
            elif LEAN_K:
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
                # The first design, kept as an autotune candidate for padded convolutions:
                # coordinates, bounds and offsets recomputed every step, channel masks always.
                # On an H200 it ran the padded 3x3 layers faster than the lean body
                # (docs/benchmarks.md), though its SASS has more instructions per step.
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
            acc = _accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)

    if HAS_SHORTCUT:
        # 1x1 convolution of the window at stride STRIDE_SHORT, no padding: always inside the
        # image.  With SHORTCUT_POOL the window is 2x2 and averaged first (ResNet-D's
        # AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)): on odd sizes the last
        # row/column of windows hangs over the border and averages the 1 or 2 pixels inside.
        s_off = ((img * HS + oh * STRIDE_SHORT) * WS + ow * STRIDE_SHORT) * C_short
        if SHORTCUT_POOL:
            in_h = oh * STRIDE_SHORT + 1 < HS
            in_w = ow * STRIDE_SHORT + 1 < WS
            # 1/count is 1, 1/2 or 1/4: exact in every dtype.
            inv_count = 1.0 / ((1 + in_h.to(tl.float32)) * (1 + in_w.to(tl.float32)))
            # Pipelining stages all four window loads through shared memory: at the config's
            # 3 stages a 128x128x64 fp16 tile needed 176 KB on sm_80 (163 KB available) and
            # fp32 tiles spilled; 2 stages took 96 KB.
            SHORTCUT_STAGES: tl.constexpr = 2
        else:
            SHORTCUT_STAGES: tl.constexpr = None  # the config's num_stages
        for c0 in tl.range(short_lo, short_hi, BLOCK_K, num_stages=SHORTCUT_STAGES):
            c = c0 + offs_k
            c_mask = c < C_short
            a_ptrs = xs_ptr + s_off[:, None] + c[None, :]
            a_mask = m_mask[:, None] & c_mask[None, :]
            a = tl.load(a_ptrs, mask=a_mask, other=0.0)
            if SHORTCUT_POOL:
                # Sum in fp32 and round the average once to the input dtype, as eager's
                # pooling layer does before its 1x1 convolution.
                a = (a.to(tl.float32)
                     + tl.load(a_ptrs + C_short, mask=a_mask & in_w[:, None], other=0.0)
                     + tl.load(a_ptrs + WS * C_short, mask=a_mask & in_h[:, None], other=0.0)
                     + tl.load(a_ptrs + (WS + 1) * C_short,
                               mask=a_mask & (in_h & in_w)[:, None], other=0.0))
                a = (a * inv_count[:, None]).to(xs_ptr.dtype.element_ty)
            b = tl.load(ws_ptr + c[:, None] * C_out + co[None, :],
                        mask=c_mask[:, None] & n_mask[None, :], other=0.0)
            acc = _accumulate(acc, a, b, DOT_PRECISION, UPCAST_DOT, SWAP_AB)

    if SWAP_AB:
        acc = tl.trans(acc)
    out_off = rows[:, None] * C_out + co[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K > 1:
        # out_ptr is the fp32 workspace [SPLIT_K, M, C_out] (small: split-K runs on small M).
        tl.store(out_ptr + tl.program_id(2) * M * C_out + out_off, acc, mask=out_mask)
    else:
        acc += tl.load(bias_ptr + co, mask=n_mask, other=0.0)[None, :]
        if HAS_RESIDUAL:
            acc += tl.load(res_ptr + out_off, mask=out_mask, other=0.0).to(tl.float32)
        if RELU:
            # torch.relu keeps NaN; a plain maximum (and PTX max) would turn it into 0 and
            # hide an overflow.
            acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
        tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


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
    """The split-K reduction and the epilogue: the slices are summed in their order (so the
    result does not depend on which program finished first), then bias, residual, ReLU,
    exactly as conv_bn_act_kernel's own epilogue."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < C_out)[None, :]
    off = offs_m[:, None] * C_out + offs_n[None, :]
    acc = tl.load(part_ptr + off, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(part_ptr + s * M * C_out + off, mask=mask, other=0.0)
    acc += tl.load(bias_ptr + offs_n, mask=offs_n < C_out, other=0.0)[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(res_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=mask)


# The JIT functions the launcher below runs: fusedres.aot compiles them ahead for a target
# (swapping their per-device JIT state) and the benchmarks' kernel report reads them back.
JIT_FUNCTIONS = (conv_bn_act_kernel, split_k_epilogue_kernel)


def configs_for(element_size):
    """The autotune configs for activations of ``element_size`` bytes (see HALF_CONFIGS)."""
    return FLOAT_CONFIGS if element_size == 4 else HALF_CONFIGS


def _with_loop(configs, lean):
    return [triton.Config({**c.kwargs, "LEAN_K": lean}, num_warps=c.num_warps,
                          num_stages=c.num_stages) for c in configs]


def _tile(config):
    kw = config.kwargs
    return kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]


# The tuner times at most this many candidates per launch (each is a compile on the first
# call): ``candidates`` is built to stay within it, tests/test_kernel.py checks it for every
# ResNet geometry.
MAX_CANDIDATES = 8

# Each tile with the lean K loop; the first design's loop (LEAN_K off) on the two wide tiles
# only: those won the padded 3x3 layers at large batches on an H200 (docs/benchmarks.md), and
# on sm_90 the first design's other tiles issue more than 2 warp-instructions per 1,000 FMA
# (128x64x32: 2.3, 64x64x64: 2.7; `fusedres inspect`).
_CLASSIC_TILES = {2: ((128, 128, 64), (64, 128, 64)), 4: ((128, 128, 32), (64, 128, 32))}
_LEAN = {size: _with_loop(configs_for(size), True) for size in (2, 4)}
_CLASSIC = {size: [c for c in _with_loop(configs_for(size), False)
                   if _tile(c) in _CLASSIC_TILES[size]] for size in (2, 4)}
# The stem's gathered K walk on sm_90 keeps only the tile that won it on an H200 (run 2): the
# gathered walk issues 3.7-11 warp-instructions per 1,000 FMA there, the strip walk (below)
# 1.7-1.9; this tile stays as the proven fallback until a GPU run has timed the strips.
_PROVEN_GATHERED_TILE = (128, 128, 32)


def _uses_classic(consts):
    """Padded tap-major convolutions (3x3, 7x7 with many channels): where the lean K loop did
    not beat the first design on an H200 (docs/benchmarks.md)."""
    return consts["PAD"] > 0 and not consts["GATHER_K"]


def candidates(consts, element_size, m=None, arch=None):
    """Every config the tuner times for a launch, at most MAX_CANDIDATES:

    * each tile with the lean K loop;
    * padded tap-major convolutions: the wide tiles with the first design's loop too, unless
      the grid leaves SMs idle (``m`` given and split-K applies), where split-K takes their
      place;
    * when ``m`` (the launch's M) leaves the GPU's SMs idle, the small tiles with split-K;
    * the stem: its strip walks (over the input padded to 4 channels where it is RGB).
    On ``arch`` 90 and newer (sm_90) only what issues at most about 2 warp-instructions per
    1,000 FMA there, on wgmma: no tile of fewer than 4 warps (wgmma needs a warpgroup: such a
    tile compiles to Ampere's HMMA), no 64x64 tile on padded convolutions (2.0-2.4) nor where
    TMA patch tiles take its place, of the stem's gathered walk only the proven tile; and the
    TMA tiles (``tma_candidates``: 1x1 rows, patches for other stride-1 convolutions).
    """
    size = 4 if element_size == 4 else 2
    hopper = arch is not None and arch >= 90
    split = split_k_candidates(m, consts, size) if m is not None else []
    listed = _LEAN[size] + (_CLASSIC[size] if _uses_classic(consts) and not split else [])
    listed += split
    strips = strip_candidates(consts)
    if hopper:
        tma = tma_candidates(consts, size)
        patches = any(c.kwargs.get("PATCH_W") for c in tma)
        listed = [c for c in listed if c.num_warps >= 4
                  and not ((_uses_classic(consts) or patches) and _tile(c)[:2] == (64, 64))
                  and not (strips and _tile(c) != _PROVEN_GATHERED_TILE)]
        listed += tma
    return listed + strips


# The stem's strip K walk (STRIP_K): one BLOCK_K=32 step per filter row.  Tiles (BLOCK_M,
# BLOCK_N, warps, stages) 64 channels wide (the stem's C_out): on sm_90 the padded strip walk
# issues 1.7 (128x64, 8 warps) and 1.9 (64x64) warp-instructions per 1,000 FMA, the 128x64
# tile on 4 warps 2.7.
_STRIP_BLOCK_K = 32
_STRIP_TILES = [(128, 64, 8, 4), (64, 64, 4, 4)]


def uses_strip(consts, block_k=_STRIP_BLOCK_K):
    """Whether the gathered K walk can run as contiguous filter-row strips (the stem)."""
    return (consts["GATHER_K"] and consts["GROUPS"] == 1 and consts["DIL"] == 1
            and consts["KW"] * consts["C_in"] <= block_k)


def strip_candidates(consts):
    """The strip-walk configs for a launch that can take them (same for every dtype: the
    step is 32 elements either way): over the input padded to 4 channels (PAD_C, see
    pad_channels) where it has 3, so that the strips load as vectors, else as it is."""
    if not uses_strip(consts):
        return []
    pad = {"PAD_C": _PAD_C} if can_pad_channels(consts, _PAD_C) else {}
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": _STRIP_BLOCK_K,
                           "LEAN_K": True, "STRIP_K": True, **pad},
                          num_warps=warps, num_stages=stages)
            for bm, bn, warps, stages in _STRIP_TILES]


# PAD_C: the launcher copies a 3-channel NHWC input into a 4-channel one (zero fourth
# channel; weights likewise), so every pixel starts at an 8-byte boundary and the strip walk
# loads 4 channels per vector (cp.async) instead of one 2-byte scalar each.  A launcher
# option, not a kernel constexpr: the kernel sees a plain C_in=4 convolution.  The tuner
# times the copies with the kernel.
_PAD_C = 4


def can_pad_channels(consts, pad_c):
    return (consts["C_in"] == 3 and consts["GROUPS"] == 1 and not consts["HAS_SHORTCUT"]
            and uses_strip(dict(consts, C_in=pad_c)))


def padded_scalars(ints, consts, pad_c):
    """The constexprs of the same launch over a ``pad_c``-channel input."""
    batch = ints["M"] // (consts["OH"] * consts["OW"])
    index_64 = consts["INDEX_64"] or batch * pad_c * consts["H"] * consts["W"] >= INDEX_32_LIMIT
    return dict(consts, C_in=pad_c, GATHER_K=pad_c < GATHER_K_BELOW, INDEX_64=index_64)


def pad_channels(x, weight, pad_c, taps):
    """``x`` ([N, C, H, W], any memory format) as a channels_last [N, pad_c, H, W] tensor with
    zero channels after the first C, in one copy; the packed weight [taps*C, C_out] as
    [taps*pad_c, C_out] with zero rows for those channels."""
    c = x.shape[1]
    xp = F.pad(x.permute(0, 2, 3, 1), (0, pad_c - c)).permute(0, 3, 1, 2)
    wp = F.pad(weight.view(taps, c, -1), (0, 0, 0, pad_c - c)).view(taps * pad_c, -1)
    return xp, wp


def _is_gemm(consts):
    """A 1x1 unpadded convolution: over NHWC at stride 1, a plain GEMM."""
    return (consts["KH"], consts["KW"], consts["PAD"]) == (1, 1, 0)


# TMA patch tiles walk K in whole blocks of this many channels.
_TMA_BLOCK_K = 64


def uses_tma(consts, element_size):
    """Whether a launch can take TMA tiles: a stride-1 ungrouped convolution in fp16/bf16
    whose row strides (C_in, C_out elements) are multiples of 16 bytes; 1x1 unpadded ones load
    rows of a GEMM, the others (ResNet's 3x3) patch tiles, which need whole channel blocks
    (C_in a multiple of 64).  fp32 stays on the pointer path (fewer compiles; it is not the
    fast dtype)."""
    return (element_size == 2 and consts["STRIDE"] == 1 and consts["GROUPS"] == 1
            and not consts["GATHER_K"] and not consts["INDEX_64"]
            and consts["C_in"] * element_size % 16 == 0
            and consts["C_out"] * element_size % 16 == 0
            and (_is_gemm(consts) or consts["C_in"] % _TMA_BLOCK_K == 0))


def patch_tile(oh, ow, pixels):
    """(BLOCK_M, PATCH_W) of a patch tile of at most ``pixels`` pixels over an ``oh`` x ``ow``
    output: the row's width rounded up to a power of two (at most ``pixels``), and no more
    rows than the image has (rounded up): at 7x7 an 8x8 patch, not 8x16 with 9 rows empty."""
    patch_w = min(pixels, triton.next_power_of_2(ow))
    return patch_w * min(pixels // patch_w, triton.next_power_of_2(oh)), patch_w


# The patch tiles (pixels, output channels, warps): 128 pixels x 64 channels on one warpgroup,
# and 64 x 128 on two where C_out allows; the pixels are the wgmma's N (SWAP_AB: a patch of
# several rows as M would feed wgmma from registers, Triton 3.6-3.8).
_PATCH_TILES = [(128, 64, 4), (64, 128, 8)]


def tma_candidates(consts, element_size):
    """The TMA configs for a launch that can take them.  1x1: one, where K has at least two
    steps (C_in >= 128; with one there is no loop to pipeline): the 128x128x64 tile with 8
    warps, or 128x64x64 with 4 warps where C_out is 64 (a 128-wide tile would be half empty).
    Other stride-1 convolutions (ResNet's 3x3): the patch tiles, each through a 4-D descriptor
    whose zero fill is the padding, computing the transposed tile (SWAP_AB)."""
    if not uses_tma(consts, element_size):
        return []
    if not _is_gemm(consts):
        configs = []
        for pixels, channels, warps in _PATCH_TILES:
            if channels > max(64, consts["C_out"]):
                continue
            block_m, patch_w = patch_tile(consts["OH"], consts["OW"], pixels)
            configs.append(triton.Config({"BLOCK_M": block_m, "BLOCK_N": channels,
                                          "BLOCK_K": _TMA_BLOCK_K, "LEAN_K": True,
                                          "USE_TMA": True, "SWAP_AB": True, "PATCH_W": patch_w},
                                         num_warps=warps, num_stages=3))
        return configs
    # A single K step (C_in = 64) has no loop to pipeline: on sm_90 its TMA tile issues 2.5-3.2
    # warp-instructions per 1,000 FMA and waits for every MMA (fusedres inspect).
    if consts["C_in"] < 2 * _TMA_BLOCK_K:
        return []
    if consts["C_out"] >= 128:
        tile, warps, stages = (128, 128, 64), 8, 3
    else:
        tile, warps, stages = (128, 64, 64), 4, 4
    return [triton.Config({"BLOCK_M": tile[0], "BLOCK_N": tile[1], "BLOCK_K": tile[2],
                           "LEAN_K": True, "USE_TMA": True},
                          num_warps=warps, num_stages=stages)]


# Split-K: a launch with fewer tiles than the GPU has SMs (batch 1: layer4 runs 8 programs on
# an H100/H200's 132) splits each tile's K steps into as many slices as bring it to at least
# one program per SM, down to one step per slice where that is what it takes (2048 -> 512 at
# 7x7: 32 slices of one step; 0.24 warp-instructions per 1,000 FMA on sm_90, the tuner times
# them against the unsplit tiles).  Not a K walk shorter than MIN_SPLIT_K_STEPS: 2 steps in
# 2 slices issued 2.4 there, the walk too short to hide a slice's prologue.
_SMS = 132
MIN_SPLIT_K_STEPS = 4
# The tiles that get a split-K candidate: the small ones (M is small whenever the grid is).
_SPLIT_TILES = {2: [(64, 64, 64, 4, 3), (64, 128, 64, 4, 4)],
                4: [(64, 64, 32, 4, 4), (64, 128, 32, 4, 4)]}


def k_steps(consts, block_k):
    """The K steps one tile walks: every tap's channel blocks, then the shortcut's."""
    cin_g = consts["C_in"] // consts["GROUPS"]
    steps = consts["KH"] * consts["KW"] * triton.cdiv(cin_g, block_k)
    return steps + (triton.cdiv(consts["C_short"], block_k) if consts["HAS_SHORTCUT"] else 0)


def split_k_for(m, consts, block_m, block_n, block_k):
    """How many slices split-K cuts K into for this tile: the fewest that bring tiles x slices
    to the SM count, at most one per K step (the kernel's slices differ by at most one step,
    so a slice of 1-2 steps is the shortest); 1 (no split) for grids that fill the GPU already,
    K walks shorter than MIN_SPLIT_K_STEPS and the flattened (gathered) K walk."""
    if consts["GATHER_K"]:
        return 1
    cout_g = consts["C_out"] // consts["GROUPS"]
    tiles = triton.cdiv(m, block_m) * triton.cdiv(cout_g, block_n) * consts["GROUPS"]
    steps = k_steps(consts, block_k)
    if tiles >= _SMS or steps < MIN_SPLIT_K_STEPS:
        return 1
    return min(triton.cdiv(_SMS, tiles), steps)


def split_k_candidates(m, consts, element_size):
    """The split-K configs for a launch of M = ``m`` (empty when its grid fills the GPU); not
    a tile wider than the layer's output channels (half of it would stay empty)."""
    configs = []
    cout_g = consts["C_out"] // consts["GROUPS"]
    for bm, bn, bk, warps, stages in _SPLIT_TILES[4 if element_size == 4 else 2]:
        if bn > max(64, cout_g):
            continue
        split = split_k_for(m, consts, bm, bn, bk)
        if split > 1:
            configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
                                          "LEAN_K": True, "SPLIT_K": split},
                                         num_warps=warps, num_stages=stages))
    return configs


def default_config(m, consts, element_size):
    """The config used without autotuning (FUSEDRES_AUTOTUNE=0): the widest tile whose grid
    still fills the GPU, a narrower one for 64-channel layers, 64x64 for small grids; the
    first design's K loop for padded convolutions where that tile has it (the wide ones),
    the lean one otherwise.  Always one of ``candidates`` (on a target that lists the tile)."""
    size = 4 if element_size == 4 else 2
    configs = (_CLASSIC[size] if _uses_classic(consts) else []) + _LEAN[size]
    cout_g = consts["C_out"] // consts["GROUPS"]
    by_tile = {}
    for c in configs:  # the first listed config of each tile shape
        by_tile.setdefault((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]), c)
    if cout_g >= 128 and triton.cdiv(m, 128) * triton.cdiv(cout_g, 128) >= _FULL_GRID:
        return by_tile[128, 128]
    if cout_g <= 64 and triton.cdiv(m, 128) >= _FULL_GRID:
        return by_tile[128, 64]
    return by_tile[64, 64]


_TUNER = autotune.Tuner("conv_bn_act", __file__)


def interpreter_config(cin_g, cout_g, m, gather_k, k_total):
    """The one config used under the interpreter: few, large programs (it pays per program
    and per loop step, not per element)."""
    block_k = k_total if gather_k else cin_g
    return {
        "BLOCK_M": min(128, max(16, triton.next_power_of_2(m))),
        "BLOCK_N": min(128, max(16, triton.next_power_of_2(cout_g))),
        "BLOCK_K": min(128, max(16, triton.next_power_of_2(block_k))),
        "LEAN_K": INTERPRETER_LEAN_K,
    }


# Which K loop the interpreter runs; the tests run both.
INTERPRETER_LEAN_K = True
# Split-K under the interpreter: at most this many slices (1: none); the tests set it.  With
# a split the interpreter's BLOCK_K drops to 16, so that even 1x1 layers have steps to split.
INTERPRETER_SPLIT_K = 1


# TMA tiles, the stem's strip walk under the interpreter where a launch can take them (the
# tests set these).
INTERPRETER_TMA = False
# The interpreter's patch tiles hold at most this many pixels (a test lowers it to cut rows
# into several patches).
INTERPRETER_PATCH_PIXELS = 128
INTERPRETER_STRIP_K = False
INTERPRETER_PAD_C = False


def _interpreter_variant(config, consts, element_size):
    """The interpreter's config with the variants the tests switch on."""
    if INTERPRETER_TMA and uses_tma(consts, element_size):
        config = dict(config, USE_TMA=True)
        if not _is_gemm(consts):
            block_m, patch_w = patch_tile(consts["OH"], consts["OW"], INTERPRETER_PATCH_PIXELS)
            config = dict(config, BLOCK_M=block_m, BLOCK_K=_TMA_BLOCK_K, SWAP_AB=True,
                          PATCH_W=patch_w)
    strip = max(16, triton.next_power_of_2(consts["KW"] * consts["C_in"]))
    if INTERPRETER_STRIP_K and uses_strip(consts, strip):
        config = dict(config, BLOCK_K=strip, STRIP_K=True)
    if INTERPRETER_PAD_C and can_pad_channels(consts, _PAD_C):
        config = dict(config, BLOCK_K=_STRIP_BLOCK_K, STRIP_K=True, PAD_C=_PAD_C)
    if INTERPRETER_SPLIT_K == 1 or consts["GATHER_K"]:
        return config
    config = dict(config, BLOCK_K=16)
    return dict(config, SPLIT_K=min(k_steps(consts, 16), INTERPRETER_SPLIT_K))


# Triton's interpreter swaps triton.language's functions for its own while a kernel runs,
# process-wide, so two threads interpreting at once break each other: one launch at a time.
_INTERPRETER_LOCK = threading.Lock()


def check_launch_input(name, t):
    """A launcher's main activation: a 4-D tensor of a supported dtype (shared with the
    other kernels' launchers, so every launcher words its errors alike)."""
    _check_4d(name, t)
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"unsupported {name} dtype {t.dtype}; expected one of "
                        f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")


def _check_4d(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")


def check_activation(name, t, device, dtype):
    """Another activation of the same launch: 4-D, on the input's device, in its dtype."""
    _check_4d(name, t)
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    if t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the input has dtype {dtype}")


def _check_packed(name, t, rows, c_out, device, dtype):
    if t.shape != (rows, c_out):
        raise ValueError(f"{name} must have shape {(rows, c_out)} (packed "
                         f"[KH*KW*C_in/groups, C_out]), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    if t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the input has dtype {dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """One spatial output size of a convolution (PyTorch's formula); the one copy of it."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def cudnn_allows_tf32() -> bool:
    """Whether eager cuDNN convolutions round fp32 to TF32 now.

    ``allow_tf32`` first: it is what most code sets, setting it resets the newer per-operator
    ``fp32_precision`` to "none" (inherit), and torch.compile can trace the read.  Once the
    newer API has set a precision, torch refuses the ``allow_tf32`` read; then the
    convolution's ``fp32_precision`` decides, inherited from cuDNN's and the global one while
    "none"."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        pass
    for precision in (torch.backends.cudnn.conv.fp32_precision,
                      getattr(torch.backends.cudnn, "fp32_precision", "none"),
                      getattr(torch.backends, "fp32_precision", "none")):
        if precision != "none":
            return precision == "tf32"
    return False


def launch_scalars(*, batch, c_in, height, width, c_out, kernel_size, stride, padding, dilation,
                   groups, relu, residual, shortcut, dtype, allow_tf32, shortcut_pool=False,
                   interpreted=INTERPRETED):
    """The kernel's integer arguments (in parameter order) and constexprs for one geometry,
    exactly as ``conv_bn_act`` launches it.  ``shortcut`` is ``(C_s, HS, WS, stride_s)`` or
    None; ``shortcut_pool`` as in ``conv_bn_act``.  Shared with ``fusedres inspect``, which
    compiles what would launch without a GPU (and so passes ``interpreted=False``)."""
    kh, kw = kernel_size
    oh = conv_output_size(height, kh, stride, padding, dilation)
    ow = conv_output_size(width, kw, stride, padding, dilation)
    c_short, hs, ws, stride_s = shortcut if shortcut is not None else (0, 0, 0, 1)
    # x, the shortcut input and the output (whose shape the residual shares); the packed
    # weights are indexed in int32 always (KH*KW*C_in/groups*C_out is far below 2**31).
    largest = max(batch * c_in * height * width, batch * c_short * hs * ws,
                  batch * c_out * oh * ow)
    ints = dict(M=batch * oh * ow)
    consts = dict(
        H=height, W=width, C_in=c_in, OH=oh, OW=ow, C_out=c_out, HS=hs, WS=ws, C_short=c_short,
        KH=kh, KW=kw, STRIDE=stride, PAD=padding, DIL=dilation, GROUPS=groups,
        STRIDE_SHORT=stride_s, SHORTCUT_POOL=shortcut is not None and shortcut_pool,
        GATHER_K=c_in // groups < GATHER_K_BELOW,
        HAS_SHORTCUT=shortcut is not None, HAS_RESIDUAL=residual, RELU=relu,
        DOT_PRECISION="tf32" if dtype == torch.float32 and allow_tf32 else "ieee",
        # The interpreter's tl.dot runs on NumPy, which has no bfloat16.
        UPCAST_DOT=interpreted and dtype == torch.bfloat16,
        INDEX_64=largest >= INDEX_32_LIMIT,
    )
    return ints, consts


def conv_bn_act(x, weight, bias, *, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                relu=True, residual=None, shortcut=None, shortcut_pool=False, out=None,
                allow_tf32=None):
    """Launch ``act(conv(x, weight) [+ shortcut] + bias [+ residual])``.

    x:        [N, C_in, H, W], any memory format (made channels_last; free if it already is).
    weight:   packed ``[KH*KW*C_in/groups, C_out]``, same dtype as ``x`` (see pack_weight).
    bias:     ``[C_out]`` float32.
    shortcut: optional ``(xs, ws, stride_s)``: a 1x1 convolution of ``xs`` ([N, C_s, HS, WS])
              with packed weight ``ws`` ([C_s, C_out]) added into the same accumulator; its
              bias must already be included in ``bias``.
    shortcut_pool: average ``xs`` over 2x2 windows at stride ``stride_s`` (which must be 2)
              before the 1x1 convolution, as ``AvgPool2d(2, 2, ceil_mode=True,
              count_include_pad=False)`` does: the output is ceil(HS/2) x ceil(WS/2) and a
              window on an odd border averages only the pixels inside.
    residual: optional tensor of the output's shape, added before the ReLU.
    out:      optional preallocated output (channels_last, output shape and dtype).
    allow_tf32: fp32 inputs only; defaults to ``cudnn_allows_tf32()`` so that the kernel
              rounds like eager cuDNN.
    Returns the output as a channels_last [N, C_out, OH, OW] tensor.
    """
    check_launch_input("input", x)
    device, dtype = x.device, x.dtype
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    for name, value in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if not isinstance(value, int):
            raise TypeError(f"{name} must be an int (square), got {value!r}")
    n, c_in, h, w = x.shape
    if groups < 1 or c_in % groups:
        raise ValueError(f"input has {c_in} channels, not divisible by groups={groups}")
    cin_g = c_in // groups
    c_out = weight.shape[1] if weight.dim() == 2 else -1
    if weight.dim() != 2 or c_out % groups:
        raise ValueError(f"weight must be packed [KH*KW*C_in/groups, C_out] with C_out "
                         f"divisible by groups={groups}, got shape {tuple(weight.shape)}")
    if weight.shape[0] != kh * kw * cin_g:
        raise ValueError(f"channel mismatch: input has {c_in} channels ({cin_g} per group), so "
                         f"the packed {kh}x{kw} weight needs {kh * kw * cin_g} rows, "
                         f"got {weight.shape[0]}")
    _check_packed("weight", weight, kh * kw * cin_g, c_out, device, dtype)
    if bias.shape != (c_out,) or bias.dtype != torch.float32 or bias.device != device:
        raise ValueError(f"bias must be a float32 [{c_out}] tensor on {device}, got "
                         f"{bias.dtype} {tuple(bias.shape)} on {bias.device}")
    oh, ow = conv_output_size(h, kh, stride, padding, dilation), conv_output_size(w, kw, stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise ValueError(f"input of size {h}x{w} is too small for a {kh}x{kw} kernel with "
                         f"stride {stride}, padding {padding}, dilation {dilation}")
    out_shape = (n, c_out, oh, ow)

    x_given = x  # what PAD_C copies from (one copy instead of two)
    x = x.contiguous(memory_format=torch.channels_last)
    if shortcut is not None:
        xs, ws, stride_s = shortcut
        check_activation("shortcut input", xs, device, dtype)
        c_short = xs.shape[1]
        _check_packed("shortcut weight", ws, c_short, c_out, device, dtype)
        hs, wsz = xs.shape[2:]
        if shortcut_pool:
            if stride_s != 2:
                raise ValueError(f"a pooled shortcut averages 2x2 windows at stride 2, got "
                                 f"stride {stride_s}")
            # ceil_mode: a last window that starts inside the input counts.
            shortcut_size = (-(-hs // 2), -(-wsz // 2))
        else:
            shortcut_size = (conv_output_size(hs, 1, stride_s, 0, 1),
                             conv_output_size(wsz, 1, stride_s, 0, 1))
        if xs.shape[0] != n or shortcut_size != (oh, ow):
            raise ValueError(f"shortcut input of shape {tuple(xs.shape)} with stride {stride_s}"
                             f"{' (2x2 average pool)' if shortcut_pool else ''} does not produce "
                             f"the output's shape {out_shape}")
        xs = xs.contiguous(memory_format=torch.channels_last)
    else:
        xs, ws, stride_s, c_short, hs, wsz = x, weight, 1, 0, 0, 0
    if residual is not None:
        check_activation("residual", residual, device, dtype)
        if tuple(residual.shape) != out_shape:
            raise ValueError(f"residual has shape {tuple(residual.shape)} but the convolution "
                             f"produces {out_shape}")
        residual = residual.contiguous(memory_format=torch.channels_last)
    if out is None:
        out = torch.empty(out_shape, device=device, dtype=dtype, memory_format=torch.channels_last)
    else:
        check_activation("out", out, device, dtype)
        if tuple(out.shape) != out_shape or not out.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"out must be a channels_last tensor of shape {out_shape}")
        # Programs read inputs other programs overwrite, and the autotuner re-runs the launch.
        sources = [t for t in (x, residual, xs if shortcut is not None else None) if t is not None]
        if any(t.untyped_storage().data_ptr() == out.untyped_storage().data_ptr() for t in sources):
            raise ValueError("out must not share memory with the input, residual or shortcut "
                             "input (the kernel does not compute in place)")
    if n == 0:
        return out

    if allow_tf32 is None:
        allow_tf32 = cudnn_allows_tf32()
    ints, consts = launch_scalars(
        batch=n, c_in=c_in, height=h, width=w, c_out=c_out, kernel_size=(kh, kw), stride=stride,
        padding=padding, dilation=dilation, groups=groups, relu=relu,
        residual=residual is not None,
        shortcut=None if shortcut is None else (c_short, hs, wsz, stride_s),
        shortcut_pool=shortcut_pool, dtype=dtype, allow_tf32=allow_tf32)
    m = ints["M"]
    cout_g = c_out // groups
    args = (x, weight, bias, xs, ws, residual if residual is not None else out, out,
            *ints.values())

    def launch(config):
        kernel_args, kernel_consts = args, consts
        if config.kwargs.get("PAD_C"):
            pad_c = config.kwargs["PAD_C"]
            kernel_args = (*pad_channels(x_given, weight, pad_c, kh * kw), *args[2:])
            kernel_consts = padded_scalars(ints, consts, pad_c)
            config = _without(config, "PAD_C")
        if config.kwargs.get("USE_TMA") and not _tma_ready(x, weight):
            config = _without(config, "USE_TMA")
        grid = (output_tiles(m, consts, config.kwargs), groups)
        split = config.kwargs.get("SPLIT_K", 1)
        if split == 1:
            conv_bn_act_kernel[grid](*kernel_args, **kernel_consts,
                                     **autotune.launch_options(config))
            return
        # Split-K: partial sums into an fp32 workspace, then one small reduce + epilogue.
        part = torch.empty((split, m, c_out), device=device, dtype=torch.float32)
        conv_bn_act_kernel[grid + (split,)](*kernel_args[:6], part, *kernel_args[7:],
                                            **kernel_consts, **autotune.launch_options(config))
        _split_k_epilogue(part, bias, residual, out, m, consts)

    if INTERPRETED:
        with _INTERPRETER_LOCK:
            launch(triton.Config(_interpreter_variant(
                interpreter_config(cin_g, cout_g, m, consts["GATHER_K"], kh * kw * cin_g),
                consts, dtype.itemsize)))
    else:
        launch(choose_config(ints, consts, dtype, launch, device))
    return out


def output_tiles(m, consts, kwargs):
    """The programs one group's output takes with the tile in ``kwargs``: M tiles (runs of
    BLOCK_M pixels, or with PATCH_W patches of rows of one image) x N tiles."""
    block_m, patch_w = kwargs["BLOCK_M"], kwargs.get("PATCH_W", 0)
    oh, ow = consts["OH"], consts["OW"]
    m_tiles = ((m // (oh * ow)) * triton.cdiv(oh, block_m // patch_w) * triton.cdiv(ow, patch_w)
               if patch_w else triton.cdiv(m, block_m))
    return m_tiles * triton.cdiv(consts["C_out"] // consts["GROUPS"], kwargs["BLOCK_N"])


def _tma_ready(x, weight):
    """TMA descriptors need 16-byte aligned bases (a view into a larger tensor may not be);
    on a GPU, Triton also needs an allocator for the descriptors' scratch."""
    if x.data_ptr() % 16 or weight.data_ptr() % 16:
        return False
    if not INTERPRETED:
        ensure_allocator()
    return True


def ensure_allocator():
    """Give Triton an allocator for in-kernel descriptors' scratch unless one is set: a user's
    own allocator is kept.  Triton keeps it in a ContextVar, so each thread sets its own.
    (Triton has no public getter: where its private one is missing, set ours.)"""
    from triton.runtime import _allocation
    current = getattr(_allocation, "_allocator", None)
    null = getattr(_allocation, "NullAllocator", None)
    if current is None or null is None or isinstance(current.get(), null):
        triton.set_allocator(_tma_scratch)


def _tma_scratch(size, alignment, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _without(config, name):
    kwargs = {k: v for k, v in config.kwargs.items() if k != name}
    return triton.Config(kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def _split_k_epilogue_blocks(m, c_out):
    """(BLOCK_M, BLOCK_N) of the split-K epilogue: small row blocks on a GPU, where M is small
    and the reduction wants many programs; the whole tensor in few programs when interpreted."""
    block_n = min(128, max(16, triton.next_power_of_2(c_out)))
    block_m = min(128, max(16, triton.next_power_of_2(m))) if INTERPRETED else 16
    return block_m, block_n


def _split_k_epilogue(part, bias, residual, out, m, consts):
    c_out = consts["C_out"]
    block_m, block_n = _split_k_epilogue_blocks(m, c_out)
    grid = (triton.cdiv(m, block_m), triton.cdiv(c_out, block_n))
    split_k_epilogue_kernel[grid](
        part, bias, residual if residual is not None else out, out, m, C_out=c_out,
        SPLIT_K=part.shape[0], HAS_RESIDUAL=consts["HAS_RESIDUAL"], RELU=consts["RELU"],
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4)


def choose_config(ints, consts, dtype, launch, device):
    """The GPU config for one launch: the tuner's pick among ``candidates`` (it calls
    ``launch(config)`` to time them the first time a geometry is seen on this machine), or
    ``default_config`` when autotuning is off."""
    element_size = dtype.itemsize
    if not autotune.enabled():
        return default_config(ints["M"], consts, element_size)
    key = tuning_key(ints, consts, dtype)
    # The candidate list per key and device, built once: this runs on every launch.
    configs = _CANDIDATES.get((device, key))
    if configs is None:
        configs = _CANDIDATES.setdefault((device, key), candidates(
            consts, element_size, ints["M"], _arch(device)))
    return _TUNER.pick(key, configs, launch, device)


_CANDIDATES = {}


def _arch(device):
    """90 for sm_90, 80 for sm_80, ...; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def tuning_key(ints, consts, dtype):
    """What the tuner's choice depends on: the dtype, every integer argument and constexpr."""
    return (str(dtype), *ints.items(), *sorted(consts.items()))


def chosen_config(ints, consts, dtype):
    """The config the tuner picked in this process for this launch, or None."""
    return _TUNER.chosen().get(tuning_key(ints, consts, dtype))


def compile_ahead(ints, consts, dtype, config):
    """Compile, without launching or allocating, the kernel that ``conv_bn_act`` launches for
    these scalars with ``config``: Triton's own JIT warm-up, so the cache key is the launch's
    (mock pointers of the right dtypes stand in for the tensors; PyTorch's allocations are
    16-byte aligned, as the mocks claim).  A split-K config writes an fp32 workspace and also
    warms its epilogue kernel.  Returns Triton's compiled convolution kernel (None when a
    ``jit_cache_hook`` skipped the compile)."""
    if config.kwargs.get("PAD_C"):
        consts = padded_scalars(ints, consts, config.kwargs["PAD_C"])
        config = _without(config, "PAD_C")
    split = config.kwargs.get("SPLIT_K", 1)
    out = torch.float32 if split > 1 else dtype
    pointers = (dtype, dtype, torch.float32, dtype, dtype, dtype, out)
    compiled = conv_bn_act_kernel.warmup(*pointers, *ints.values(), **consts,
                                         **autotune.launch_options(config), grid=(1,))
    if split > 1:
        block_m, block_n = _split_k_epilogue_blocks(ints["M"], consts["C_out"])
        split_k_epilogue_kernel.warmup(
            torch.float32, torch.float32, dtype, dtype, ints["M"], C_out=consts["C_out"],
            SPLIT_K=split, HAS_RESIDUAL=consts["HAS_RESIDUAL"], RELU=consts["RELU"],
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, grid=(1,))
    return compiled
