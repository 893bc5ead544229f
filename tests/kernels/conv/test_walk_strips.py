"""The stem's strip K walk (kernels/conv/walk_gathered.py ``walk_strips``), over the input as
it is and padded to 4 channels by the launcher."""
import pytest
import torch

from .cases import DTYPES, assert_special_values_match, launch, operands, reference
from ...numerics import assert_close_to_reference, rel_tol

# (name, N, C_in, H, W, C_out, kernel, stride, padding): the stem and other small-channel
# convolutions whose filter rows fit one strip.
STRIP_GEOMETRIES = [
    ("stem 7x7/s2 C_in=3", 2, 3, 19, 17, 64, 7, 2, 3),
    ("7x7/s2 odd C_out", 1, 3, 12, 15, 24, 7, 2, 3),
    ("5x5/s1 C_in=1 no padding", 3, 1, 9, 8, 16, 5, 1, 0),
    ("3x3/s3 C_in=5 padding 2", 1, 5, 10, 11, 32, 3, 3, 2),
]


def _check(geometry, dtype, residual, variant, layout="nchw"):
    _, n, c_in, h, w, c_out, kernel, stride, padding = geometry
    x, weight, bias = operands(n, c_in, h, w, c_out, kernel, 1, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ref = reference(x, weight, bias, stride, padding, 1, 1, relu=False)
    res = torch.randn_like(ref).to(dtype) if residual else None
    ref = reference(x, weight, bias, stride, padding, 1, 1, res, relu=residual)
    out, launches = launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding,
                           relu=residual, residual=res, variant=variant)
    assert_close_to_reference(out, ref, rel_tol(dtype), f"strip {geometry[0]} {dtype}")
    return launches


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", STRIP_GEOMETRIES, ids=[g[0] for g in STRIP_GEOMETRIES])
@pytest.mark.parametrize("epilogue", ["residual+relu", "none"])
def test_strips_match_float64(geometry, dtype, epilogue, strip):
    launches = _check(geometry, dtype, epilogue != "none", strip)
    kernel, c_in = geometry[6], geometry[2]
    assert [launch.walk for launch in launches] == ["strips"]
    assert launches[0].config.block_k >= kernel * c_in


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", STRIP_GEOMETRIES[:2],
                         ids=[g[0] for g in STRIP_GEOMETRIES[:2]])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_padded_stem_matches_float64(geometry, dtype, layout, padded_strip):
    launches = _check(geometry, dtype, True, padded_strip, layout)
    # One strip of 7 taps x 4 channels per filter row, over a 4-channel input.
    [launched] = launches
    assert launched.walk == "strips" and launched.config.block_k == 32
    assert launched.constexprs["C_in"] == 4


def test_strips_keep_nan_and_inf_at_the_border(strip):
    x, weight, bias = operands(1, 3, 13, 11, 64, 7, 1, torch.float32)
    x[0, 0, 0, 0], x[0, 2, 12, 10], x[0, 1, 6, 5] = float("inf"), float("nan"), -float("inf")
    ref = reference(x, weight, bias, 2, 3, 1, 1)
    out, launches = launch(x, weight, bias, kernel=7, stride=2, padding=3, variant=strip)
    assert [launch.walk for launch in launches] == ["strips"]
    assert_special_values_match(out, ref, 1e-4, "strip border")
