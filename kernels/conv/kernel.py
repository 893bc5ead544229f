"""The entry kernel: implicit-GEMM convolution with a fused epilogue, over NHWC activations.

    out = act(conv(x, W) [+ conv1x1_s(xs, Ws)] + bias [+ residual])

GEMM view, per group: M = N*OH*OW output pixels, N = C_out/groups channels,
K = KH*KW*C_in/groups, cut into BLOCK_M x BLOCK_N output tiles (tile.py: one tile's pixels,
K walks and epilogue, up to its only store; with split-K an fp32 partial tile that
``split_k.py`` finishes).  This kernel maps programs to tiles: one tile per program, or
(PERSISTENT) a grid of at most one program per SM, each walking the tiles ``pid, pid +
programs, ...`` in grouped order with its TMA descriptors made once, loading each tile's
bias and residual before its K walk (FLATTEN: the tile loop and the K walk
software-pipelined as one loop, those loaded in the epilogue: in one loop an early load
would be issued, predicated off, on every K step).

K walks (``@triton.jit`` helpers, one file each but the two TMA walks, inlined by Triton):
  walk_taps        tap-major by pointers (default; RECOMPUTE_TAPS: offsets per step)
  walk_gathered    the flattened walk for few channels per group (GATHER_K)
  walk_strips      the flattened walk as filter-row strips (GATHER_K and STRIP_K: the stem)
  walk_tma_rows    1x1 stride-1 tiles by TMA (USE_TMA)
  walk_tma_patches 3x3 stride-1 patch tiles by TMA (USE_TMA and PATCH_W)
  walk_shortcut    the fused 1x1 shortcut, optionally 2x2-average-pooled (HAS_SHORTCUT)

Weights arrive packed as ``[KH*KW*C_in/groups, C_out]`` (row = (kh*KW + kw)*Cin_g + ci),
the order the K walks read, so every weight tile is one contiguous strip of rows.
"""
import triton
import triton.language as tl

from .tile import conv_tile
from .walk_tma import tma_descriptors


@triton.jit
def conv_bn_act_kernel(
    x_ptr,      # [N, H, W, C_in]            activations, NHWC contiguous
    w_ptr,      # [KH*KW*C_in/GROUPS, C_out] packed folded weight
    bias_ptr,   # [C_out] fp32               folded bias (plus the shortcut's)
    xs_ptr,     # [N, HS, WS, C_short]       shortcut input (if HAS_SHORTCUT)
    ws_ptr,     # [C_short, C_out]           packed folded shortcut weight (if HAS_SHORTCUT)
    res_ptr,    # [N, OH, OW, C_out]         residual (if HAS_RESIDUAL)
    out_ptr,    # [N, OH, OW, C_out]         output; with SPLIT_K > 1 [SPLIT_K, M, C_out] fp32
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
    # The config (kernels/conv/configs.py: ConvConfig).
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    RECOMPUTE_TAPS: tl.constexpr, SPLIT_K: tl.constexpr, USE_TMA: tl.constexpr,
    STRIP_K: tl.constexpr, SWAP_AB: tl.constexpr, PATCH_W: tl.constexpr,
    PERSISTENT: tl.constexpr, FLATTEN: tl.constexpr,
):
    num_n: tl.constexpr = (C_out // GROUPS + BLOCK_N - 1) // BLOCK_N
    if USE_TMA:
        x_desc, w_desc = tma_descriptors(x_ptr, w_ptr, M, H, W, C_in, C_out, OH, OW, KH, KW,
                                         BLOCK_M, BLOCK_N, BLOCK_K, PATCH_W)
    else:
        x_desc = x_ptr
        w_desc = w_ptr

    if PERSISTENT:
        tl.static_assert(USE_TMA and SPLIT_K == 1 and GROUPS == 1,
                         "persistent programs: TMA tiles, no split-K, no groups")
        if PATCH_W > 0:
            PATCH_H: tl.constexpr = BLOCK_M // PATCH_W
            m_tiles = (M // (OH * OW) * ((OH + PATCH_H - 1) // PATCH_H)
                       * ((OW + PATCH_W - 1) // PATCH_W))
        else:
            m_tiles = tl.cdiv(M, BLOCK_M)
        # Grouped order: GROUP_M consecutive M tiles sweep the N tiles together, so the
        # programs running at once share input rows and weight tiles in L2.
        GROUP_M: tl.constexpr = 8
        in_group: tl.constexpr = GROUP_M * num_n
        # FLATTEN: the tile loop and the K walk pipeline as one loop, so the next tile's
        # first loads are in flight while this tile's epilogue runs.
        for tile in tl.range(tl.program_id(0), m_tiles * num_n, tl.num_programs(0),
                             flatten=FLATTEN):
            first_m = tile // in_group * GROUP_M
            group_rows = tl.minimum(m_tiles - first_m, GROUP_M)
            conv_tile(x_ptr, w_ptr, bias_ptr, xs_ptr, ws_ptr, res_ptr, out_ptr, x_desc,
                      w_desc, M, first_m + tile % in_group % group_rows,
                      tile % in_group // group_rows, 0, H, W, C_in, OH, OW, C_out, HS, WS,
                      C_short, KH, KW, STRIDE, PAD, DIL, GROUPS, STRIDE_SHORT, SHORTCUT_POOL,
                      GATHER_K, HAS_SHORTCUT, HAS_RESIDUAL, RELU, DOT_PRECISION, UPCAST_DOT,
                      INDEX_64, BLOCK_M, BLOCK_N, BLOCK_K, RECOMPUTE_TAPS, SPLIT_K, USE_TMA,
                      STRIP_K, SWAP_AB, PATCH_W, EARLY_LOADS=not FLATTEN)
    else:
        # Programs that share an M tile (the same input pixels) run next to each other, so
        # the input rows they all read stay in L2 while the N tiles sweep the (small) weight.
        pid = tl.program_id(0)
        conv_tile(x_ptr, w_ptr, bias_ptr, xs_ptr, ws_ptr, res_ptr, out_ptr, x_desc, w_desc, M,
                  pid // num_n, pid % num_n, tl.program_id(1), H, W, C_in, OH, OW, C_out, HS,
                  WS, C_short, KH, KW, STRIDE, PAD, DIL, GROUPS, STRIDE_SHORT, SHORTCUT_POOL,
                  GATHER_K, HAS_SHORTCUT, HAS_RESIDUAL, RELU, DOT_PRECISION, UPCAST_DOT,
                  INDEX_64, BLOCK_M, BLOCK_N, BLOCK_K, RECOMPUTE_TAPS, SPLIT_K, USE_TMA,
                  STRIP_K, SWAP_AB, PATCH_W, EARLY_LOADS=False)
