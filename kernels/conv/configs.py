"""The conv kernel's configs: the one config type, the tile tables, which configs the tuner
times for a launch (the candidate policy), which K walk a config runs (``walk``) and whether
a caller's config can run a launch at all (``check_config``).

Every candidate is a compile on a launch's first call, so a launch gets at most
``MAX_CANDIDATES``; what drove each table and rule is measured in docs/inspect.md and
docs/benchmarks.md.
"""
from typing import NamedTuple

import triton

from .geometry import GATHER_K_BELOW


class ConvConfig(NamedTuple):
    """One way to run the kernel: the tile, warps and stages, and the variant flags.

    ``recompute_taps``: the tap-major pointer walk recomputes coordinates, bounds and offsets
    every step instead of hoisting per-tap scalar offsets (an autotune candidate for padded
    convolutions).  ``split_k``: K slices per tile (1: none).  ``tma``: tiles loaded through
    TMA descriptors (sm_90).  ``strip``: the stem's K walk as filter-row strips.
    ``swap_ab``: the transposed tile (output channels as the MMA's M).  ``patch_w``: an M
    tile is a patch of output rows this many pixels wide (0: a run of pixels).
    ``persistent``: TMA tiles walked by at most one program per SM, each looping over its
    tiles (kernels/conv/kernel.py; the launcher sizes the grid); ``flatten``: its tile loop
    and K walk pipelined as one loop, so the next tile's loads overlap this one's epilogue.
    ``pad_c``: a launcher option, not a kernel constexpr: the launcher pads the input's
    channels to this many first (0: not).  ``cudnn``: not a Triton config at all but the
    cuDNN backend (kernels/conv/cudnn.py; ``CUDNN``, every other field unused), a candidate
    beside the tiles wherever ``backends.cudnn_allowed()``.
    """
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    recompute_taps: bool = False
    split_k: int = 1
    tma: bool = False
    strip: bool = False
    swap_ab: bool = False
    patch_w: int = 0
    pad_c: int = 0
    cudnn: bool = False
    persistent: bool = False
    flatten: bool = False

    @property
    def tile(self):
        return self.block_m, self.block_n, self.block_k

    def constexprs(self) -> dict:
        """The kernel's constexprs for this config (``pad_c`` is the launcher's)."""
        return dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_K=self.block_k,
                    RECOMPUTE_TAPS=self.recompute_taps, SPLIT_K=self.split_k, USE_TMA=self.tma,
                    STRIP_K=self.strip, SWAP_AB=self.swap_ab, PATCH_W=self.patch_w,
                    PERSISTENT=self.persistent, FLATTEN=self.flatten)

    def launch_options(self) -> dict:
        """The keyword arguments of a JIT launch with this config.  Every launch and every
        ahead-of-time compile passes exactly these, so both produce the same JIT cache key."""
        return {**self.constexprs(), "num_warps": self.num_warps,
                "num_stages": self.num_stages}

    def options(self) -> str:
        """The variant flags that are set, in words: ``cudnn``, ``recomputed-taps``, ``split-k 4``,
        ``tma``, ``persistent``, ``flattened``, ``patch 8``, ``swap-ab``, ``strip``, ``pad-c 4``
        ("" for none)."""
        words = [("cudnn", self.cudnn), ("recomputed-taps", self.recompute_taps),
                 (f"split-k {self.split_k}", self.split_k > 1), ("tma", self.tma),
                 ("persistent", self.persistent), ("flattened", self.flatten),
                 (f"patch {self.patch_w}", self.patch_w), ("swap-ab", self.swap_ab),
                 ("strip", self.strip), (f"pad-c {self.pad_c}", self.pad_c)]
        return " ".join(word for word, on in words if on)

    def describe(self) -> str:
        """``128x64x32 w4 s4``, then ``options()``: the tile, warps, stages and variant flags;
        what the tuner stores and the reports print (``cudnn`` for the cuDNN backend)."""
        if self.cudnn:
            return "cudnn"
        m, n, k = self.tile
        return " ".join(filter(None, [f"{m}x{n}x{k} w{self.num_warps} s{self.num_stages}",
                                      self.options()]))


# The cuDNN backend as a candidate config (tile fields unused).
CUDNN = ConvConfig(0, 0, 0, 0, 0, cudnn=True)


def walk(config, consts):
    """The K walk a launch of ``config`` runs for a geometry's ``consts`` (the helper in
    kernels/conv/ that holds it): ``taps``, ``taps-recomputed``, ``gathered``, ``strips``,
    ``tma-rows`` or ``tma-patches``; ``cudnn`` for the cuDNN backend."""
    if config.cudnn:
        return "cudnn"
    if config.tma:
        return "tma-patches" if config.patch_w else "tma-rows"
    if consts["GATHER_K"]:
        return "strips" if config.strip else "gathered"
    return "taps-recomputed" if config.recompute_taps else "taps"


def check_config(config, consts, element_size):
    """Raise ValueError naming the field unless ``config`` can run a launch of ``consts``
    (the geometry's constexprs) in activations of ``element_size`` bytes: a caller's explicit
    config is checked here, before anything reaches Triton."""
    def refuse(field, why):
        raise ValueError(f"config {config.describe()!r}: {field} {why}")

    if config.cudnn:
        if config != CUDNN:
            refuse("cudnn", "is a backend of its own: use configs.CUDNN, no tile or variant")
        return

    for field in ("block_m", "block_n", "block_k"):
        size = getattr(config, field)
        if size < 1 or size & (size - 1):
            refuse(field, f"must be a power of two, got {size}")
    if config.block_k < 16:
        refuse("block_k", f"must be at least 16 (tl.dot's smallest K), got {config.block_k}")
    if config.pad_c:
        if not can_pad_channels(consts, config.pad_c):
            refuse("pad_c", "applies to an ungrouped 3-channel input without a shortcut whose "
                            "padded filter rows fit one strip")
        consts = dict(consts, C_in=config.pad_c)
    if config.strip and not uses_strip(consts, config.block_k):
        refuse("strip", "needs the gathered walk (few input channels), no groups or dilation, "
                        "and a filter row within block_k")
    if config.recompute_taps and consts["GATHER_K"]:
        refuse("recompute_taps", "applies to the tap-major walk only (16 or more input "
                                 "channels per group)")
    if not 1 <= config.split_k <= k_steps(consts, config.block_k):
        refuse("split_k", f"must be between 1 and the {k_steps(consts, config.block_k)} K steps")
    if config.split_k > 1 and consts["GATHER_K"]:
        refuse("split_k", "applies to the tap-major walk only")
    if config.patch_w and (consts["GATHER_K"] or config.block_m % config.patch_w):
        refuse("patch_w", "needs the tap-major walk and block_m a multiple of it")
    if config.tma:
        if (consts["STRIDE"] != 1 or consts["GROUPS"] != 1 or consts["GATHER_K"]
                or element_size == 4):
            refuse("tma", "applies to stride-1 ungrouped fp16/bf16 convolutions with 16 or "
                          "more input channels")
        if not (is_gemm(consts) or config.patch_w):
            refuse("tma", "needs patch_w except on 1x1 unpadded convolutions")
        if config.patch_w and consts["C_in"] % config.block_k:
            refuse("tma", "patch tiles need C_in a multiple of block_k")
    if config.persistent and (not config.tma or config.split_k > 1):
        refuse("persistent", "applies to TMA tiles without split-K")
    if config.flatten and not config.persistent:
        refuse("flatten", "applies to persistent configs only")


def _tiles(*rows):
    return [ConvConfig(*row) for row in rows]


# Curated GPU tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), one list per activation
# element size.  Rules (docs/inspect.md has the measurements): 128x128 tiles hold 128
# accumulator registers per thread at 4 warps and spill, so they get 8 warps; 128x64 on 4
# warps takes BLOCK_K=32 only (64 spills on grouped 3x3 convolutions); 64x64x64 runs 3 stages
# (4 spilled on sm_80).  fp32 takes BLOCK_K=32 throughout, the same bytes per K step as the
# 2-byte list (64 needs up to 144 KB of shared memory); its 128x64 tile on 8 warps runs 3
# stages (4 spilled on sm_80 with a fused shortcut).  tests/test_gpu_inspect.py compiles
# every candidate of every ResNet-18/50 geometry (int32 offsets) for sm_80 and sm_90 in fp16
# and fp32, except ResNet-50 fp32 on sm_80: no spills, within shared memory, on tensor cores.
# A launch past 2**31 elements compiles the int64 variant of the same tiles, which may spill.
HALF_TILES = _tiles((128, 128, 64, 8, 3), (128, 64, 32, 4, 4), (64, 128, 64, 4, 4),
                    (64, 64, 64, 4, 3), (128, 128, 32, 8, 4), (64, 32, 32, 2, 4))
FLOAT_TILES = _tiles((128, 128, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 4, 4),
                     (64, 64, 32, 4, 4), (64, 32, 32, 2, 4))


def tiles_for(element_size):
    """The tile list for activations of ``element_size`` bytes."""
    return FLOAT_TILES if element_size == 4 else HALF_TILES


# The tuner times at most this many candidates per launch.
MAX_CANDIDATES = 8

# The wide tiles, which also get the recomputed-offsets walk on padded convolutions: they won
# the padded 3x3 layers at large batches on an H200; on sm_90 the other tiles with that walk
# issue more than 2 warp-instructions per 1,000 FMA.
_RECOMPUTED_TILES = {2: ((128, 128, 64), (64, 128, 64)), 4: ((128, 128, 32), (64, 128, 32))}
# The stem's gathered walk on sm_90 keeps only the tile that won it on an H200 (the strip
# walk issues half the instructions; this stays the fallback until a GPU run times strips).
_PROVEN_GATHERED_TILE = (128, 128, 32)
# The tile that won no 3x3 stride-1 layer of M >= 12,544 in the H200 runs' tuner records
# (docs/inspect.md): where persistent patch tiles join such a launch's list on sm_90, they
# take its place within MAX_CANDIDATES.
_LOSING_WIDE_TILE = (128, 128, 32)
# A tile count that fills an H100/H200 (132 SMs) about twice: below it, smaller tiles win by
# giving every SM work.  The default config is a heuristic for when tuning is off, not sized
# per device.
_FULL_GRID = 256
# SMs of the usual card of each architecture, for candidate lists built without a device
# (``fusedres inspect``/``warmup --arch``); a launch uses its device's own count.
TYPICAL_SMS = {80: 108, 90: 132}


def _size(element_size):
    return 4 if element_size == 4 else 2


def _recomputed(size):
    return [c._replace(recompute_taps=True) for c in tiles_for(size)
            if c.tile in _RECOMPUTED_TILES[size]]


def uses_recomputed(consts):
    """Padded tap-major convolutions (3x3, 7x7 with many channels): where the hoisted walk
    did not beat the recomputed one on an H200."""
    return consts["PAD"] > 0 and not consts["GATHER_K"]


def candidates(consts, element_size, m=None, arch=None, sms=None):
    """Every config the tuner times for a launch, at most MAX_CANDIDATES:

    * each tile with the hoisted tap walk;
    * padded tap-major convolutions: the wide tiles with the recomputed walk too, unless the
      grid leaves SMs idle (``m`` given and split-K applies), where split-K takes their place;
    * when ``m`` (the launch's M) leaves the GPU's ``sms`` idle, the small tiles with
      split-K (``sms`` defaults to the arch's usual card, ``TYPICAL_SMS``);
    * the stem: its strip walks (over the input padded to 4 channels where it is RGB).
    On ``arch`` 90 and newer only what issues at most about 2 warp-instructions per 1,000 FMA
    there, on wgmma: no tile of fewer than 4 warps (it compiles to Ampere's HMMA), no 64x64
    tile on padded convolutions nor where TMA patch tiles take its place, of the stem's
    gathered walk only the proven tile; and the TMA tiles (``tma_candidates``), persistent
    ones included where the grid outnumbers the SMs (for 3x3 in the place of 128x128x32).
    """
    size = _size(element_size)
    hopper = arch is not None and arch >= 90
    if sms is None:
        sms = TYPICAL_SMS.get(arch, TYPICAL_SMS[90])
    split = split_k_candidates(m, consts, size, sms) if m is not None else []
    listed = tiles_for(size) + (_recomputed(size) if uses_recomputed(consts) and not split
                                else [])
    listed += split
    strips = strip_candidates(consts)
    if hopper:
        tma = tma_candidates(consts, size, m, sms)
        patches = any(c.patch_w for c in tma)
        persistent_patches = any(c.patch_w and c.persistent for c in tma)
        listed = [c for c in listed if c.num_warps >= 4
                  and not ((uses_recomputed(consts) or patches) and c.tile[:2] == (64, 64))
                  and not (persistent_patches and c.tile == _LOSING_WIDE_TILE)
                  and not (strips and c.tile != _PROVEN_GATHERED_TILE)]
        listed += tma
    return listed + strips


def default_config(m, consts, element_size):
    """The config used without autotuning (FUSEDRES_AUTOTUNE=0): the widest tile whose grid
    still fills the GPU, a narrower one for 64-channel layers, 64x64 for small grids; the
    recomputed walk for padded convolutions where that tile has it (the wide ones), the
    hoisted one otherwise.  Always one of ``candidates`` (on a target that lists the tile)."""
    size = _size(element_size)
    configs = (_recomputed(size) if uses_recomputed(consts) else []) + tiles_for(size)
    cout_g = consts["C_out"] // consts["GROUPS"]
    by_tile = {}
    for c in configs:  # the first listed config of each tile shape
        by_tile.setdefault(c.tile[:2], c)
    if cout_g >= 128 and triton.cdiv(m, 128) * triton.cdiv(cout_g, 128) >= _FULL_GRID:
        return by_tile[128, 128]
    if cout_g <= 64 and triton.cdiv(m, 128) >= _FULL_GRID:
        return by_tile[128, 64]
    return by_tile[64, 64]


def interpreter_config(m, consts):
    """The config under Triton's interpreter: few, large programs (it pays per program and
    per loop step, not per element).  Tests derive variants from it (``_replace``)."""
    cin_g = consts["C_in"] // consts["GROUPS"]
    cout_g = consts["C_out"] // consts["GROUPS"]
    block_k = consts["KH"] * consts["KW"] * cin_g if consts["GATHER_K"] else cin_g
    return ConvConfig(min(128, max(16, triton.next_power_of_2(m))),
                      min(128, max(16, triton.next_power_of_2(cout_g))),
                      min(128, max(16, triton.next_power_of_2(block_k))),
                      num_warps=4, num_stages=1)


# ---------------------------------------------------------------- the stem's strip walk

# One BLOCK_K=32 step per filter row.  Tiles (BLOCK_M, BLOCK_N, warps, stages) 64 channels
# wide (the stem's C_out).
STRIP_BLOCK_K = 32
_STRIP_TILES = [(128, 64, 8, 4), (64, 64, 4, 4)]
# The launcher pads a 3-channel input to this many channels for the strip walk, so every
# pixel starts at an 8-byte boundary and the strips load as vectors.
PAD_C = 4


def uses_strip(consts, block_k=STRIP_BLOCK_K):
    """Whether the gathered K walk can run as contiguous filter-row strips (the stem)."""
    return (consts["GATHER_K"] and consts["GROUPS"] == 1 and consts["DIL"] == 1
            and consts["KW"] * consts["C_in"] <= block_k)


def can_pad_channels(consts, pad_c=PAD_C):
    return (consts["C_in"] == 3 and consts["GROUPS"] == 1 and not consts["HAS_SHORTCUT"]
            and uses_strip(dict(consts, C_in=pad_c, GATHER_K=pad_c < GATHER_K_BELOW)))


def strip_candidates(consts):
    """The strip-walk configs for a launch that can take them (the same for every dtype: the
    step is 32 elements either way), over the input padded to 4 channels where it has 3."""
    if not uses_strip(consts):
        return []
    pad_c = PAD_C if can_pad_channels(consts) else 0
    return [ConvConfig(bm, bn, STRIP_BLOCK_K, warps, stages, strip=True, pad_c=pad_c)
            for bm, bn, warps, stages in _STRIP_TILES]


# ---------------------------------------------------------------- TMA tiles (sm_90)

# TMA patch tiles walk K in whole blocks of this many channels.
TMA_BLOCK_K = 64
# The patch tiles (pixels, output channels, warps): 128 pixels x 64 channels on one
# warpgroup, 64 x 128 on two where C_out allows; pixels are the wgmma's N (swap-AB).
_PATCH_TILES = [(128, 64, 4), (64, 128, 8)]


def is_gemm(consts):
    """A 1x1 unpadded convolution: over NHWC at stride 1, a plain GEMM."""
    return (consts["KH"], consts["KW"], consts["PAD"]) == (1, 1, 0)


def uses_tma(consts, element_size):
    """Whether a launch can take TMA tiles: a stride-1 ungrouped convolution in fp16/bf16
    whose row strides (C_in, C_out elements) are multiples of 16 bytes; 1x1 unpadded ones load
    rows of a GEMM, the others patch tiles, which need whole channel blocks (C_in a multiple
    of 64).  fp32 stays on pointers (fewer compiles; it is not the fast dtype)."""
    return (element_size == 2 and consts["STRIDE"] == 1 and consts["GROUPS"] == 1
            and not consts["GATHER_K"] and not consts["INDEX_64"]
            and consts["C_in"] * element_size % 16 == 0
            and consts["C_out"] * element_size % 16 == 0
            and (is_gemm(consts) or consts["C_in"] % TMA_BLOCK_K == 0))


def patch_tile(oh, ow, pixels):
    """(BLOCK_M, PATCH_W) of a patch tile of at most ``pixels`` pixels over an ``oh`` x ``ow``
    output: the row's width rounded up to a power of two (at most ``pixels``), and no more
    rows than the image has (rounded up): at 7x7 an 8x8 patch, not 8x16 with 9 rows empty."""
    patch_w = min(pixels, triton.next_power_of_2(ow))
    return patch_w * min(pixels // patch_w, triton.next_power_of_2(oh)), patch_w


def tma_candidates(consts, element_size, m=None, sms=None):
    """The TMA configs for a launch that can take them.  1x1: where K has at least two steps
    (C_in >= 128; a single step has no loop to pipeline), 128x128x64 on 8 warps, or 128x64x64
    on 4 where C_out is 64.  Other stride-1 convolutions (ResNet's 3x3): the patch tiles,
    through a 4-D descriptor whose zero fill is the padding, swap-AB.  Where the first tile's
    grid has more tiles than the GPU's ``sms`` (or ``m`` is not given), it also runs
    persistent (``persistent_candidates``)."""
    if not uses_tma(consts, element_size):
        return []
    if not is_gemm(consts):
        configs = []
        for pixels, channels, warps in _PATCH_TILES:
            if channels > max(64, consts["C_out"]):
                continue
            block_m, patch_w = patch_tile(consts["OH"], consts["OW"], pixels)
            configs.append(ConvConfig(block_m, channels, TMA_BLOCK_K, warps, 3, tma=True,
                                      swap_ab=True, patch_w=patch_w))
    elif consts["C_in"] < 2 * TMA_BLOCK_K:
        return []
    elif consts["C_out"] >= 128:
        configs = [ConvConfig(128, 128, 64, 8, 3, tma=True)]
    else:
        configs = [ConvConfig(128, 64, 64, 4, 4, tma=True)]
    if m is None or output_tiles(m, consts, configs[0]) > (sms or TYPICAL_SMS[90]):
        configs += persistent_candidates(consts, configs[0])
    return configs


def persistent_candidates(consts, config):
    """The persistent versions of TMA ``config``: for a 1x1 (a GEMM, whose short K walks
    leave the most to gain from overlapping tiles) both the nested loops and the flattened
    one; for patch tiles, whose K walks are 9x longer, the nested loops only.  Not flattened
    with a fused shortcut: Triton flattens a loop with one inner loop only, and leaves the
    two K walks' loops nested (the same code as the nested candidate)."""
    persistent = config._replace(persistent=True)
    if is_gemm(consts) and not consts["HAS_SHORTCUT"]:
        return [persistent, persistent._replace(flatten=True)]
    return [persistent]


def output_tiles(m, consts, config):
    """The programs one group's output takes with ``config``'s tile: M tiles (runs of BLOCK_M
    pixels, or patches of rows of one image) x N tiles (the launcher's grid; a persistent
    config's is at most the SM count)."""
    oh, ow = consts["OH"], consts["OW"]
    # Integer arithmetic: triton.cdiv is a ConstexprFunction, ~1.5 us per host call.
    if config.patch_w:
        rows = config.block_m // config.patch_w
        m_tiles = (m // (oh * ow)) * -(-oh // rows) * -(-ow // config.patch_w)
    else:
        m_tiles = -(-m // config.block_m)
    return m_tiles * -(-(consts["C_out"] // consts["GROUPS"]) // config.block_n)


# ---------------------------------------------------------------- split-K

# A launch with fewer tiles than the GPU has SMs (batch 1) splits each tile's K steps into as
# many slices as bring it to one program per SM, down to one step per slice.  Not a K walk
# shorter than MIN_SPLIT_K_STEPS: too short to hide a slice's prologue.
MIN_SPLIT_K_STEPS = 4
# The tiles that get a split-K candidate: the small ones (M is small whenever the grid is).
_SPLIT_TILES = {2: _tiles((64, 64, 64, 4, 3), (64, 128, 64, 4, 4)),
                4: _tiles((64, 64, 32, 4, 4), (64, 128, 32, 4, 4))}


def k_steps(consts, block_k):
    """The K steps one tile walks: every tap's channel blocks, then the shortcut's."""
    cin_g = consts["C_in"] // consts["GROUPS"]
    steps = consts["KH"] * consts["KW"] * triton.cdiv(cin_g, block_k)
    return steps + (triton.cdiv(consts["C_short"], block_k) if consts["HAS_SHORTCUT"] else 0)


def split_k_for(m, consts, tile, sms):
    """How many slices split-K cuts K into for ``tile`` (BLOCK_M, BLOCK_N, BLOCK_K): the
    fewest that bring tiles x slices to ``sms``, at most one per K step; 1 (no split) for grids
    that fill the GPU already, K walks shorter than MIN_SPLIT_K_STEPS and the gathered walk."""
    if consts["GATHER_K"]:
        return 1
    block_m, block_n, block_k = tile
    cout_g = consts["C_out"] // consts["GROUPS"]
    tiles = triton.cdiv(m, block_m) * triton.cdiv(cout_g, block_n) * consts["GROUPS"]
    steps = k_steps(consts, block_k)
    if tiles >= sms or steps < MIN_SPLIT_K_STEPS:
        return 1
    return min(triton.cdiv(sms, tiles), steps)


def split_k_candidates(m, consts, element_size, sms):
    """The split-K configs for a launch of M = ``m`` on ``sms`` SMs (empty when its grid
    fills them); not a tile wider than the layer's output channels."""
    cout_g = consts["C_out"] // consts["GROUPS"]
    configs = []
    for config in _SPLIT_TILES[_size(element_size)]:
        if config.block_n > max(64, cout_g):
            continue
        split = split_k_for(m, consts, config.tile, sms)
        if split > 1:
            configs.append(config._replace(split_k=split))
    return configs
