"""Split-K: slices of each tile's K steps, one program each, summed in a fixed order by the
second kernel (kernels/conv/split_k.py) before the epilogue."""
import pytest
import torch

from .cases import (DTYPES, SHORTCUT_GEOMETRIES, SHORTCUT_IDS, TAP_MAJOR, check_geometry,
                    check_nan_and_inf, check_shortcut, launch, operands)


def _slices(launches):
    return [launch.config.split_k for launch in launches]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", TAP_MAJOR, ids=[g[0] for g in TAP_MAJOR])
@pytest.mark.parametrize("epilogue", ["residual+relu", "none"])
def test_split_k_matches_float64(geometry, dtype, epilogue, split_k):
    if geometry[10] > 1 and dtype != torch.float16:
        pytest.skip("grouped geometries: fp16 only (the interpreter is slow on them)")
    launches = check_geometry(geometry, dtype, epilogue, split_k)
    assert len(launches) == 1 and _slices(launches)[0] > 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("main,shortcut_geometry", SHORTCUT_GEOMETRIES, ids=SHORTCUT_IDS)
def test_split_k_with_shortcut_matches_float64(main, shortcut_geometry, dtype, split_k):
    # The slices cover the main walk's steps and then the shortcut's: some slice holds both.
    launches = check_shortcut(main, shortcut_geometry, dtype, split_k)
    assert len(launches) == 1 and _slices(launches)[0] > 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_k_with_one_step_per_slice(dtype, split_k):
    # As many slices as K steps (the shortest slices the launcher picks): 3 main steps of 16
    # channels (the last one partial), then 2 of the shortcut's.
    launches = check_shortcut((1, 40, 5, 3, 24, 1, 1, 0, 1), (32, 9, 5, 2), dtype,
                              lambda base, consts: split_k(base, consts, slices=1000))
    assert _slices(launches) == [5]


def test_split_k_is_deterministic(split_k):
    x, weight, bias = operands(1, 64, 7, 7, 128, 3, 1, torch.float16)
    first, launches = launch(x, weight, bias, kernel=3, stride=1, padding=1, variant=split_k)
    second, more = launch(x, weight, bias, kernel=3, stride=1, padding=1, variant=split_k)
    assert _slices(launches + more) == [3, 3] and torch.equal(first, second)


@pytest.mark.parametrize("where", ["input", "shortcut input", "residual", "padding border"])
def test_nan_and_inf_land_where_the_reference_puts_them_with_split_k(where, split_k):
    launches = check_nan_and_inf(where, split_k)
    assert len(launches) == 1 and _slices(launches)[0] > 1
