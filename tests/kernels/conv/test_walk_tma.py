"""TMA tiles (kernels/conv/walk_tma.py): 1x1 rows and 3x3 patch tiles with swap-AB, the
pointer fallback for misaligned inputs, and which launches get them.  Under the interpreter
the descriptors are emulated; on a GPU these run on sm_90 only."""
import pytest
import torch

from fusedres.kernels.conv import configs

from ...conftest import DEVICE
from ...numerics import assert_close_to_reference, rel_tol
from .cases import (GEOMETRIES, assert_special_values_match, check_geometry, launch, needs_sm_90,
                    operands, reference, tma_config)

# The 1x1 stride-1 geometries, which can take TMA rows; the last has channel counts that
# are not powers of two (tiles past the tensor's end are zero-filled by TMA).
ONE_BY_ONE = [g for g in GEOMETRIES if g[6] == 1 and g[7] == 1] + [
    ("1x1/s1 odd channels", 2, 72, 5, 5, 40, 1, 1, 0, 1, 1)]
# The 3x3 stride-1 geometries, which take TMA patch tiles (C_in a multiple of 64): image
# sizes that leave partial patches, output channels that leave a partial tile, dilation.
PATCHED = [g for g in GEOMETRIES if g[6] == 3 and g[7] == 1 and g[10] == 1] + [
    ("3x3/s1 odd sizes", 2, 128, 5, 11, 40, 3, 1, 1, 1, 1),
    ("3x3/s1 7x7 (layer4)", 1, 64, 7, 7, 136, 3, 1, 1, 1, 1),
    ("3x3/s1 one row", 1, 64, 1, 13, 64, 3, 1, 1, 1, 1),
]


def _ran(launches):
    """(walk, patch_w, swap_ab) of each launch, as it ran."""
    return [(launch.walk, launch.config.patch_w, launch.config.swap_ab) for launch in launches]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", ONE_BY_ONE, ids=[g[0] for g in ONE_BY_ONE])
@pytest.mark.parametrize("epilogue", ["residual+relu", "none"])
def test_tma_rows_match_float64(geometry, dtype, epilogue, tma):
    launches = check_geometry(geometry, dtype, epilogue, tma)
    assert _ran(launches) == [("tma-rows", 0, False)]


@pytest.mark.parametrize("where", ["input", "shortcut input", "residual"])
def test_tma_rows_with_shortcut_keep_nan_and_inf(where, tma):
    # A Bottleneck's last 1x1/s1 convolution (128 input channels, so that sm_90 lists a TMA
    # tile) with a 1x1/s1 shortcut of 64 channels, as in layer1's first block.
    x, weight, bias = operands(1, 128, 7, 6, 256, 1, 1, torch.float16)
    xs = torch.randn(1, 64, 7, 6, device=DEVICE).to(torch.float16)
    w_short = (torch.randn(256, 64, 1, 1, device=DEVICE) / 8).to(torch.float16)
    residual = torch.randn(1, 256, 7, 6, device=DEVICE).to(torch.float16)
    if where == "input":
        x[0, 5, 3, 2], x[0, 9, 0, 5] = float("nan"), float("inf")
    elif where == "shortcut input":
        xs[0, 7, 4, 5], xs[0, 1, 6, 0] = float("nan"), -float("inf")
    else:
        residual[0, 100, 6, 0] = float("nan")
    ref = reference(x, weight, bias, 1, 0, 1, 1, residual, (xs, w_short, 1))
    out, launches = launch(x, weight, bias, kernel=1, stride=1, padding=0, residual=residual,
                           shortcut=(xs, w_short, 1), variant=tma)
    assert _ran(launches) == [("tma-rows", 0, False)]
    assert_special_values_match(out, ref, rel_tol(torch.float16), "TMA rows")


@pytest.mark.parametrize("kernel,c_out", [(1, 128), (3, 72)], ids=["1x1 rows", "3x3 patches"])
def test_tma_falls_back_to_pointers_for_a_misaligned_input(kernel, c_out, tma):
    # A channels_last view 2 bytes into its storage: no TMA descriptor may point there.  The
    # 3x3 launch keeps its patch tiles and transposed tile, loaded by pointers (masks for the
    # padding).
    n, c, h, w = 1, 128, 6, 7
    storage = torch.randn(n * h * w * c + 1, device=DEVICE).to(torch.float16)
    x = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16
    weight = (torch.randn(c_out, c, kernel, kernel, device=DEVICE) / (12 * kernel)).half()
    bias = torch.randn(c_out, device=DEVICE)
    out, launches = launch(x, weight, bias, kernel=kernel, stride=1, padding=kernel // 2,
                           variant=tma)
    patch = launches[0].config.patch_w
    assert _ran(launches) == [("taps", patch, kernel == 3)] and (patch > 0) == (kernel == 3)
    assert_close_to_reference(out, reference(x, weight, bias, 1, kernel // 2, 1, 1),
                              rel_tol(torch.float16), f"misaligned {kernel}x{kernel}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", PATCHED, ids=[g[0] for g in PATCHED])
@pytest.mark.parametrize("epilogue", ["residual+relu", "none"])
def test_tma_patches_match_float64(geometry, dtype, epilogue, tma):
    # TMA's zero fill (negative coordinates included) is the padding: the border pixels of
    # every patch check it.
    launches = check_geometry(geometry, dtype, epilogue, tma)
    [(walk, patch_w, swap_ab)] = _ran(launches)
    assert walk == "tma-patches" and patch_w > 0 and swap_ab


@pytest.mark.parametrize("where", ["corner", "edge", "shortcut input", "residual"])
def test_tma_patches_with_shortcut_keep_nan_and_inf(where, tma):
    # A BasicBlock's second 3x3/s1 convolution with the 1x1/s2 downsample fused (ResNet-18's
    # layer2): a NaN or Inf at the border must reach exactly the outputs whose window holds it.
    x, weight, bias = operands(2, 128, 6, 5, 128, 3, 1, torch.float16)
    xs = torch.randn(2, 64, 12, 10, device=DEVICE).to(torch.float16)
    w_short = (torch.randn(128, 64, 1, 1, device=DEVICE) / 8).to(torch.float16)
    residual = None
    if where == "corner":
        x[1, 5, 0, 0], x[0, 70, 5, 4] = float("nan"), float("inf")
    elif where == "edge":
        x[0, 3, 2, 4], x[1, 127, 5, 2] = -float("inf"), float("nan")
    elif where == "shortcut input":
        xs[0, 7, 10, 8], xs[1, 1, 0, 0] = float("nan"), -float("inf")
    else:
        residual = torch.randn(2, 128, 6, 5, device=DEVICE).to(torch.float16)
        residual[1, 100, 5, 4] = float("nan")
    ref = reference(x, weight, bias, 1, 1, 1, 1, residual, (xs, w_short, 2))
    out, launches = launch(x, weight, bias, kernel=3, stride=1, padding=1, residual=residual,
                           shortcut=(xs, w_short, 2), variant=tma)
    [(walk, patch_w, swap_ab)] = _ran(launches)
    assert walk == "tma-patches" and patch_w > 0 and swap_ab
    assert_special_values_match(out, ref, rel_tol(torch.float16), "TMA patches")


def test_tma_patches_cut_a_long_row(tma):
    # Patches narrower than the row (32 of 37 pixels, then 5), on a GPU as under the
    # interpreter: the program's patch column comes from its id, and the last patch hangs
    # over the row's end.
    launches = check_geometry(("3x3/s1 long rows", 1, 64, 3, 37, 64, 3, 1, 1, 1, 1),
                              torch.float16, "residual+relu",
                              lambda base, consts: tma_config(base, consts, patch_pixels=32))
    assert _ran(launches) == [("tma-patches", 32, True)]
    assert launches[0].grid[0] == 3 * 2  # 3 rows of 2 patches, 64 channels in one tile


@pytest.mark.gpu
@pytest.mark.parametrize("geometry", PATCHED, ids=[g[0] for g in PATCHED])
def test_every_tma_candidate_on_sm_90(geometry):
    needs_sm_90()
    ran = []
    for candidate in configs.tma_candidates(_consts(geometry), 2):
        launches = check_geometry(geometry, torch.float16, "residual+relu",
                                  lambda base, consts, c=candidate: c)
        assert [launch.config for launch in launches] == [candidate]
        ran.append(candidate)
    assert ran and len(set(ran)) == len(ran)


def _consts(geometry):
    from fusedres.kernels import ConvGeometry
    _, n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups = geometry
    return ConvGeometry(n, c_in, h, w, c_out, (kernel, kernel), stride, padding, dilation,
                        groups, True, True, None, torch.float16).scalars(False, False)[1]
