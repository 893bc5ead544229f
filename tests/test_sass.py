"""The SASS reader (fusedres/sass.py): the K loop per step, in loops closed by a backward
branch, in completely unrolled spans, and in persistent kernels' tile loops (the steady K
step, not the once-per-tile epilogue); on written SASS and on GEMMs compiled for sm_90."""
from fusedres import sass

from .standin_runner import run_checks


# SASS as cuobjdump prints it: /*address*/ instruction ; /* encoding */
def _sass(*instructions, start=0x100):
    return "\n".join(f"        /*{start + 16 * i:04x}*/                   {text} ;  /* 0x0 */"
                     for i, text in enumerate(instructions))


def test_k_loop_is_read_from_a_backward_branch():
    code = _sass("MOV R1, R2", "LDGSTS.E [R3], desc[UR4][R5.64]",
                 "HGMMA.64x128x16.F32 R24, gdesc[UR8], RZ",
                 "HGMMA.64x128x16.F32 R24, gdesc[UR12], R24, gsb0",
                 "WARPGROUP.DEPBAR.LE gsb0, 0x1", "IADD3 R1, R1, 0x1, RZ", "BRA 0x110", "EXIT")
    loop = sass.read_k_loop(code)
    # From 0x110 (the LDGSTS) to the branch: 6 instructions, 2 wgmma, not serialised.
    assert loop == sass.KLoop(6, 2, False, False)


def test_an_unrolled_loop_is_counted_per_wgmma_group_and_a_full_wait_is_serialised():
    step = ["LDGSTS.E [R3], desc[UR4][R5.64]", "HGMMA.64x128x16.F32 R24, gdesc[UR8], R24, gsb0",
            "WARPGROUP.DEPBAR.LE gsb0, 0x0"]
    loop = sass.read_k_loop(_sass("MOV R1, R2", *step, *step, *step, "UTMALDG.2D [UR8], [UR4]",
                                 "EXIT"))
    # First to last HGMMA: 7 instructions, two steps of 3 apart.
    assert loop.loop_instructions == 3
    assert loop.mma_per_step == 1 and loop.serialised_mma and loop.tma


def test_one_full_wait_between_two_unrolled_k_walks_is_not_serialisation():
    # Main walk then the fused shortcut's, each unrolled: wgmma groups overlap within each
    # walk (0x1 waits); one full wait where the pipeline drains between them, once per tile.
    step = ["LDGSTS.E [R3], desc[UR4][R5.64]", "HGMMA.64x128x16.F32 R24, gdesc[UR8], R24, gsb0",
            "WARPGROUP.DEPBAR.LE gsb0, 0x1"]
    handover = ["WARPGROUP.DEPBAR.LE gsb0, 0x0", "DEPBAR.LE SB0, 0x0"]
    loop = sass.read_k_loop(_sass(*step, *step, *step, *handover, *step, *step, *step, "EXIT"))
    assert loop.mma_per_step == 1 and not loop.serialised_mma
    # The same two walks with a full wait after every group are.
    step[2] = "WARPGROUP.DEPBAR.LE gsb0, 0x0"
    loop = sass.read_k_loop(_sass(*step, *step, *step, *handover, *step, *step, *step, "EXIT"))
    assert loop.serialised_mma


def _flattened_loop(store):
    """A persistent loop whose tile loop and K loop are one: the next tile's coordinates
    behind one branch, the tile's drain, conversion and ``store`` behind another; a barrier
    wait's retry out of line."""
    return _sass(
        "MOV R1, R2",                                             # 0x100
        "IADD3 R1, R1, 0x1, RZ",                                  # 0x110: loop head
        "@P1 BRA 0x150",                                          # not a tile's first step
        "IMAD R4, R5, R6, RZ", "IMAD.HI.U32 R7, R4, R6, RZ",      # next tile's coordinates
        "@!P3 BRA 0x200",                                         # 0x150: retry, out of line
        "UTMALDG.2D [UR8], [UR4]",
        "HGMMA.64x128x16.F32 R24, gdesc[UR8], R24, gsb0",
        "WARPGROUP.DEPBAR.LE gsb0, 0x1",
        "@P0 BRA 0x1d0",                                          # 0x190: not the last step
        "WARPGROUP.DEPBAR.LE gsb0, 0x0",                          # the tile's drain
        "F2FP.F16.F32.PACK_AB R24, R25, R24",
        store,
        "ISETP.NE.AND P2, PT, R1, R9, PT",                        # 0x1d0
        "@P2 BRA 0x110",
        "EXIT",
        "SYNCS.PHASECHK.TRANS64.TRYWAIT P3, [UR4], R2",           # 0x200
        "BRA 0x160")


def test_a_flattened_persistent_loop_reads_its_steady_k_step():
    loop = sass.read_k_loop(_flattened_loop("@UP0 UTMASTG.2D [UR4], [UR8]"))
    # Head, the two skips, the retry branch, load, wgmma, 0x1 wait, the loop's tail: 9
    # instructions; the drain before the store is once per tile, not serialisation.
    assert loop == sass.KLoop(9, 1, False, True)
    # The same with the store by threads (STG).
    assert sass.read_k_loop(_flattened_loop("STG.E.128 desc[UR4][R2.64], R24")) == loop


def test_a_loop_without_a_store_is_read_whole():
    # No store in the loop: not a tile loop (a convolution's K loop), every instruction of
    # the body counts, and a full wait in it is serialisation.
    loop = sass.read_k_loop(_flattened_loop("STS [R3], R24"))
    assert loop == sass.KLoop(14, 1, True, True)


def test_a_k_loop_unrolled_inside_a_tile_loop_is_read_as_an_unrolled_span():
    # One iteration is a whole tile: three wgmma groups, the drain and the store after them.
    step = ["HGMMA.64x128x16.F32 R24, gdesc[UR8], R24, gsb0", "WARPGROUP.DEPBAR.LE gsb0, 0x1",
            "LDGSTS.E [R3], desc[UR4][R5.64]"]
    loop = sass.read_k_loop(_sass("MOV R1, R2", "UTMALDG.2D [UR8], [UR4]", *step, *step,
                                  "HGMMA.64x128x16.F32 R24, gdesc[UR8], R24, gsb0",
                                  "WARPGROUP.DEPBAR.LE gsb0, 0x0", "@P0 STG.E [R2.64], R24",
                                  "@P1 BRA 0x110", "EXIT"))
    # First to last wgmma: 7 instructions, two steps of 3 apart; the drain is after them.
    assert loop == sass.KLoop(3, 1, False, True)


# The persistent GEMM's K loop (nested in the tile loop) and the flattened one's steady step
# against the one-tile-per-program GEMM's K loop, in instructions per step: persistent 79 and
# flattened 95 against 71 (Triton 3.8).  The flattened step does all a one-tile step does and
# its tile bookkeeping; its loop's whole body, epilogue included, is 324.
PERSISTENT_BOUNDS, FLATTENED_BOUNDS = (0.8, 1.25), (1.0, 1.5)


def test_compiled_persistent_gemms_read_their_steady_k_step():
    """Compiled by Triton for sm_90 in a process without the interpreter."""
    result = run_checks(["gemm_sass"])["gemm_sass"]
    assert "error" not in result, result["error"]
    one_tile = result["one_tile"]["loop_instructions"]
    assert not result["one_tile"]["serialised_mma"] and 40 < one_tile < 120
    for name, (low, high) in (("persistent", PERSISTENT_BOUNDS),
                              ("flattened", FLATTENED_BOUNDS)):
        loop = result[name]
        assert loop["mma_per_step"] == 4 and not loop["serialised_mma"], (name, loop)
        assert low * one_tile <= loop["loop_instructions"] <= high * one_tile, (name, loop,
                                                                               one_tile)
    # One K step per tile: its wgmma groups, not the tile's setup, drain and store.
    single = result["single_step"]
    assert not single["serialised_mma"] and single["loop_instructions"] <= one_tile, single
