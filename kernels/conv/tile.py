"""One output tile of the conv kernel, up to its only store: the tile's pixels and channels,
its range of K steps, the K walks into one fp32 accumulator, and the epilogue.  The entry
kernel (kernel.py) runs it once per program, or for every tile a persistent program owns.

GEMM view, per group g: M = N*OH*OW output pixels, N = C_out/groups channels,
K = KH*KW*C_in/groups.  Tile ``(pid_m, pid_n)`` of ``group`` is BLOCK_M pixels (a run of
them, or a PATCH_H x PATCH_W patch of one image's output rows) x BLOCK_N channels.
"""
import triton
import triton.language as tl

from .epilogue import bias_residual_act_store
from .walk_gathered import walk_gathered
from .walk_shortcut import walk_shortcut
from .walk_strips import walk_strips
from .walk_taps import walk_taps
from .walk_tma import walk_tma_patches, walk_tma_rows


@triton.jit
def conv_tile(x_ptr, w_ptr, bias_ptr, xs_ptr, ws_ptr, res_ptr, out_ptr, x_desc, w_desc, M,
              pid_m, pid_n, group,
              H: tl.constexpr, W: tl.constexpr, C_in: tl.constexpr, OH: tl.constexpr,
              OW: tl.constexpr, C_out: tl.constexpr, HS: tl.constexpr, WS: tl.constexpr,
              C_short: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr,
              PAD: tl.constexpr, DIL: tl.constexpr, GROUPS: tl.constexpr,
              STRIDE_SHORT: tl.constexpr, SHORTCUT_POOL: tl.constexpr, GATHER_K: tl.constexpr,
              HAS_SHORTCUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
              DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, INDEX_64: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              RECOMPUTE_TAPS: tl.constexpr, SPLIT_K: tl.constexpr, USE_TMA: tl.constexpr,
              STRIP_K: tl.constexpr, SWAP_AB: tl.constexpr, PATCH_W: tl.constexpr,
              EARLY_LOADS: tl.constexpr):
    """``x_desc``/``w_desc``: the TMA descriptors of x and the packed weight (USE_TMA; else
    unused).  ``EARLY_LOADS``: load the bias and the residual tile before the K walks, so
    their latency hides behind them instead of following the final drain (they then hold
    registers across the walks)."""
    cin_g: tl.constexpr = C_in // GROUPS
    cout_g: tl.constexpr = C_out // GROUPS

    # ---- the tile's pixels and channels
    if PATCH_W > 0:
        # Patch tiles: the tile's BLOCK_M pixels are a PATCH_H x PATCH_W patch of one
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
    # Every activation offset derives from img (inputs) or rows (output, residual).  int64
    # only when a tensor reaches 2**31 elements: a 64-bit offset per element of a thread's
    # tiles takes two registers.  In int32, an unmasked offset and each partial sum of it stay
    # below the tensor's size, so nothing a load or store uses can overflow; masked lanes may
    # wrap, but are never dereferenced.
    rows = offs_m
    if INDEX_64:
        img = img.to(tl.int64)
        rows = rows.to(tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < cout_g
    co = group * cout_g + offs_n
    residual = None  # loaded here only with EARLY_LOADS, else by the epilogue
    if EARLY_LOADS:
        bias = tl.load(bias_ptr + co, mask=n_mask, other=0.0)
        if HAS_RESIDUAL:
            residual = tl.load(res_ptr + rows[:, None] * C_out + co[None, :],
                               mask=m_mask[:, None] & n_mask[None, :], other=0.0)

    # ---- the tile's K steps
    # Split-K (SPLIT_K > 1): program_id(2) takes one contiguous slice of the K steps, the main
    # walk's and then the shortcut's.  The slices differ by at most one step
    # (floor(s*steps/SPLIT_K) bounds), so any count up to the step count works and none is
    # empty.  With SPLIT_K == 1 the bounds are constants.
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

    # ---- the K walks
    if SWAP_AB:
        # The transposed tile: output channels are the MMA's M (64 rows per warpgroup on
        # sm_90), pixels its wide N.
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # The top-left input pixel of each row's receptive field; a tap adds a scalar to it.
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD

    if USE_TMA:
        tl.static_assert(STRIDE == 1 and GROUPS == 1, "TMA tiles: stride-1 ungrouped only")
        if PATCH_W > 0:
            acc = walk_tma_patches(acc, x_desc, w_desc, img, patch_oh, patch_ow, pid_n,
                                   main_lo, main_hi, C_in, KW, PAD, DIL, BLOCK_M, BLOCK_N,
                                   BLOCK_K, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
        else:
            tl.static_assert(KH == 1 and KW == 1 and PAD == 0,
                             "TMA rows: 1x1 unpadded convolutions (else patch tiles)")
            acc = walk_tma_rows(acc, x_desc, w_desc, pid_m, pid_n, main_lo, main_hi, BLOCK_M,
                                BLOCK_N, BLOCK_K, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    elif GATHER_K and STRIP_K:
        tl.static_assert(GROUPS == 1 and DIL == 1 and KW * C_in <= BLOCK_K,
                         "strip K walk: ungrouped, undilated, a filter row within BLOCK_K")
        acc = walk_strips(acc, x_ptr, w_ptr, img, ih0, iw0, m_mask, co, n_mask, H, W, C_in,
                          C_out, KH, KW, BLOCK_K, DOT_PRECISION, UPCAST_DOT, SWAP_AB)
    elif GATHER_K:
        acc = walk_gathered(acc, x_ptr, w_ptr, img, ih0, iw0, m_mask, co, n_mask, group, H, W,
                            C_in, C_out, KH, KW, DIL, GROUPS, BLOCK_K, DOT_PRECISION,
                            UPCAST_DOT, SWAP_AB)
    else:
        acc = walk_taps(acc, x_ptr, w_ptr, img, ih0, iw0, m_mask, co, n_mask, group, main_lo,
                        main_hi, H, W, C_in, C_out, KW, PAD, DIL, GROUPS, BLOCK_K,
                        cout_g % BLOCK_N == 0, RECOMPUTE_TAPS, DOT_PRECISION, UPCAST_DOT,
                        SWAP_AB)
    if HAS_SHORTCUT:
        acc = walk_shortcut(acc, xs_ptr, ws_ptr, img, oh, ow, m_mask, co, n_mask, short_lo,
                            short_hi, HS, WS, C_short, C_out, STRIDE_SHORT, SHORTCUT_POOL,
                            BLOCK_K, DOT_PRECISION, UPCAST_DOT, SWAP_AB)

    # ---- the epilogue
    if SWAP_AB:
        acc = tl.trans(acc)
    out_off = rows[:, None] * C_out + co[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K > 1:
        # out_ptr is the fp32 workspace [SPLIT_K, M, C_out] (small: split-K runs on small M).
        tl.store(out_ptr + tl.program_id(2) * M * C_out + out_off, acc, mask=out_mask)
    else:
        if not EARLY_LOADS:
            bias = tl.load(bias_ptr + co, mask=n_mask, other=0.0)
        bias_residual_act_store(acc, bias, res_ptr, residual, out_ptr, out_off, out_mask,
                                HAS_RESIDUAL, EARLY_LOADS, RELU)
