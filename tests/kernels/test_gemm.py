"""kernels/gemm/: the reference persistent TMA GEMM against float64 (odd sizes: partial
tiles; more tiles than programs, so each program's loop wraps), what it refuses, and that it
compiles for sm_90 to wgmma without spills."""
import pytest
import torch

from fusedres.kernels import INTERPRETED
from fusedres.kernels.gemm import launcher, persistent_matmul

from ..conftest import DEVICE
from ..standin_runner import run_checks
from ..numerics import assert_close_to_reference, rel_tol


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("m,k,n", [(77, 40, 56), (64, 128, 96), (5, 16, 8), (200, 24, 40)])
def test_matches_float64(m, k, n, dtype, flatten):
    a = torch.randn(m, k, device=DEVICE).to(dtype)
    b = (torch.randn(k, n, device=DEVICE) / k ** 0.5).to(dtype)
    c = persistent_matmul(a, b, flatten)
    assert c.shape == (m, n) and c.dtype == dtype
    assert_close_to_reference(c, a.double() @ b.double(), rel_tol(dtype), f"{m}x{k}x{n}")


def test_programs_walk_several_tiles():
    if not INTERPRETED:
        pytest.skip("the interpreter's tile and program count are what make the loop wrap")
    tile = launcher.INTERPRETER_TILE
    tiles = -(-200 // tile["BLOCK_M"]) * -(-40 // tile["BLOCK_N"])
    assert tiles > 2 * launcher.INTERPRETER_PROGRAMS  # test_matches_float64's 200x24x40


def test_nan_reaches_the_output():
    a = torch.randn(33, 16, device=DEVICE).half()
    b = torch.randn(16, 24, device=DEVICE).half()
    a[7, 3] = float("nan")
    c = persistent_matmul(a, b)
    assert c[7].isnan().all() and not c[:7].isnan().any() and not c[8:].isnan().any()


@pytest.mark.parametrize("a_shape,b_shape,dtype,match", [
    ((4, 16), (16, 8), torch.float32, "expected float16 or bfloat16"),
    ((4, 16), (12, 8), torch.float16, r"b must be \[16, N\]"),
    ((4, 12), (12, 8), torch.float16, "multiples of 8"),
    ((4, 16, 1), (16, 8), torch.float16, "2-D"),
])
def test_refuses(a_shape, b_shape, dtype, match):
    a = torch.randn(*a_shape, device=DEVICE).to(dtype)
    b = torch.randn(*b_shape, device=DEVICE).to(dtype)
    with pytest.raises((TypeError, ValueError), match=match):
        persistent_matmul(a, b)


def test_compiles_to_wgmma_without_spills_on_sm_90():
    """Triton's own compile for an sm_90 target, in a process without the interpreter."""
    result = run_checks(["gemm_compile"])["gemm_compile"]
    assert "error" not in result, result["error"]
    assert result["wgmma"] and result["stack"] == 0 and 0 < result["registers"] <= 255
