"""The conv kernel against float64 F.conv2d: every ResNet geometry through the tap-major and
gathered K walks, the fused shortcut, NaN/Inf, int64 offsets and fuzzed geometries.  The
other walks and split-K have their own files (test_walk_*.py, test_split_k.py)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusedres.kernels.conv import geometry as geometry_module

from ...conftest import DEVICE
from ...numerics import assert_close_to_reference, rel_tol
from .cases import (DTYPES, GEOMETRIES, SHORTCUT_GEOMETRIES, SHORTCUT_IDS, check_geometry,
                    check_nan_and_inf, check_shortcut, launch, operands, reference)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("epilogue", ["relu", "residual+relu", "none"])
def test_geometry_matches_float64(geometry, dtype, epilogue, tap_walk, request):
    gathered = geometry[2] // geometry[10] < geometry_module.GATHER_K_BELOW
    if gathered and request.node.callspec.params["tap_walk"]:
        pytest.skip("the gathered K walk has one form; recompute_taps does not apply")
    launches = check_geometry(geometry, dtype, epilogue, tap_walk)
    recomputed = request.node.callspec.params["tap_walk"]
    assert [launch.walk for launch in launches] == [
        "gathered" if gathered else "taps-recomputed" if recomputed else "taps"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("main,shortcut_geometry", SHORTCUT_GEOMETRIES, ids=SHORTCUT_IDS)
def test_shortcut_fusion_matches_float64(main, shortcut_geometry, dtype, tap_walk, request):
    launches = check_shortcut(main, shortcut_geometry, dtype, tap_walk)
    recomputed = request.node.callspec.params["tap_walk"]
    assert [launch.walk for launch in launches] == ["taps-recomputed" if recomputed else "taps"]


@pytest.mark.parametrize("where", ["input", "shortcut input", "residual", "padding border"])
def test_nan_and_inf_land_where_the_reference_puts_them(where, tap_walk):
    assert len(check_nan_and_inf(where, tap_walk)) == 1


# FUSEDRES_FUZZ picks how hard the fuzz below searches: "quick" (CI, seconds) or "deep"
# (10,000 examples, run by hand: about half an hour to an hour on 2 CPU cores under the
# interpreter; `nice -n 19 env FUSEDRES_FUZZ=deep pytest tests/kernels/conv/test_kernel.py
# -k fuzzed --hypothesis-show-statistics` prints how many examples ran).
FUZZ_EXAMPLES = {"quick": 40, "deep": 10_000}
FUZZ = os.environ.get("FUSEDRES_FUZZ", "quick")
if FUZZ not in FUZZ_EXAMPLES:
    raise ValueError(f"FUSEDRES_FUZZ={FUZZ!r}: expected one of {', '.join(FUZZ_EXAMPLES)}")


@st.composite
def _geometries(draw):
    groups = draw(st.sampled_from([1, 1, 2, 4]))
    # Per-group channel counts mostly not multiples of 16: partial K and N tiles.
    c_in = groups * draw(st.integers(1, 40))
    c_out = groups * draw(st.integers(1, 40))
    kernel = draw(st.sampled_from([1, 2, 3, 5, 7]))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 3))
    smallest = max(1, dilation * (kernel - 1) + 1 - 2 * padding)  # one output pixel
    h = draw(st.integers(smallest, max(smallest, 13)))
    w = draw(st.integers(smallest, max(smallest, 13)))
    n = draw(st.integers(1, 3))
    return n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups


@st.composite
def _shortcuts(draw, n, oh, ow):
    """None, or a 1x1 shortcut ``(xs shape, stride_s)`` whose output is ``oh x ow``."""
    if not draw(st.booleans()):
        return None
    stride_s = draw(st.integers(1, 2))
    # Any input size the 1x1/stride_s convolution maps onto oh x ow (odd remainders too).
    hs = (oh - 1) * stride_s + 1 + draw(st.integers(0, stride_s - 1))
    ws = (ow - 1) * stride_s + 1 + draw(st.integers(0, stride_s - 1))
    return (n, draw(st.integers(1, 40)), hs, ws), stride_s


@settings(max_examples=FUZZ_EXAMPLES[FUZZ], deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(geometry=_geometries(), dtype=st.sampled_from(DTYPES), residual=st.booleans(),
       relu=st.booleans(), recompute_taps=st.booleans(), data=st.data())
def test_fuzzed_geometries_match_float64(geometry, dtype, residual, relu, recompute_taps, data):
    n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups = geometry
    x, weight, bias = operands(n, c_in, h, w, c_out, kernel, groups, dtype)
    ref = reference(x, weight, bias, stride, padding, dilation, groups, relu=False)
    res = torch.randn_like(ref).to(dtype) if residual else None
    drawn = data.draw(_shortcuts(n, ref.shape[2], ref.shape[3]), label="shortcut")
    shortcut = None
    if drawn is not None:
        (_, c_s, hs, ws), stride_s = drawn
        xs = torch.randn(n, c_s, hs, ws, device=DEVICE).to(dtype)
        shortcut = (xs, (torch.randn(c_out, c_s, 1, 1, device=DEVICE) / c_s ** 0.5).to(dtype),
                    stride_s)
    ref = reference(x, weight, bias, stride, padding, dilation, groups, res, shortcut, relu)
    out, _ = launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding,
                    dilation=dilation, groups=groups, relu=relu, residual=res,
                    shortcut=shortcut,
                    variant=lambda base, consts: base._replace(
                        recompute_taps=recompute_taps and not consts["GATHER_K"]))
    assert_close_to_reference(out, ref, rel_tol(dtype),
                              f"{geometry} {dtype} residual={residual} shortcut={drawn} "
                              f"relu={relu} recompute_taps={recompute_taps}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", ["gathered K +residual", "tap-major K +shortcut"])
def test_int64_offsets_match_float64(case, dtype, monkeypatch):
    """The int64 offset path, forced on a small problem by lowering the threshold (real
    inputs past 2**31 elements need a GPU: test_int64_offsets_past_2_to_the_31)."""
    monkeypatch.setattr(geometry_module, "INDEX_32_LIMIT", 1)
    if case.startswith("gathered"):
        n, c_in, h, w, c_out, kernel, stride, padding = 2, 3, 11, 9, 32, 7, 2, 3
    else:
        n, c_in, h, w, c_out, kernel, stride, padding = 2, 32, 5, 4, 32, 3, 1, 1
    x, weight, bias = operands(n, c_in, h, w, c_out, kernel, 1, dtype)
    residual = shortcut = None
    if case.endswith("residual"):
        ref = reference(x, weight, bias, stride, padding, 1, 1, relu=False)
        residual = torch.randn_like(ref).to(dtype)
    else:
        xs = torch.randn(n, 16, 2 * h, 2 * w, device=DEVICE).to(dtype)
        shortcut = (xs, (torch.randn(c_out, 16, 1, 1, device=DEVICE) / 4).to(dtype), 2)
    ref = reference(x, weight, bias, stride, padding, 1, 1, residual, shortcut)
    out, launches = launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding,
                           residual=residual, shortcut=shortcut)
    assert [launch.constexprs["INDEX_64"] for launch in launches] == [True]
    assert_close_to_reference(out, ref, rel_tol(dtype), f"int64 {case} {dtype}")


@pytest.mark.gpu
def test_int64_offsets_past_2_to_the_31():
    """An input of more than 2**31 elements: the last image must be computed correctly."""
    from fusedres.kernels import conv_bn_act, pack_weight
    import torch.nn.functional as F
    n, c, h, w = 2, 64, 2048, 8200  # 2 * 64 * 2048 * 8200 > 2**31
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, c, 1, 1, device="cuda", dtype=torch.float16) / 8
    bias = torch.zeros(64, device="cuda")
    out = conv_bn_act(x, pack_weight(weight, torch.float16), bias, kernel_size=1, relu=False)
    tail = x[-1:, :, -4:, -4:]
    ref = F.conv2d(tail.double(), weight.double())
    assert_close_to_reference(out[-1:, :, -4:, -4:], ref, rel_tol(torch.float16), "tail")
