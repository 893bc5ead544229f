"""Persistent programs (kernels/conv/kernel.py, PERSISTENT and FLATTEN): TMA tiles walked by
at most one program per SM, in grouped order, the bias loaded before the K walk.  Under the
interpreter a persistent grid has ``launcher.INTERPRETER_PROGRAMS`` programs and the tiles
here are small, so every program's loop wraps over several tiles, the last ones partial."""
import pytest
import torch

from fusedres.kernels import INTERPRETED, ConvConfig, ConvGeometry
from fusedres.kernels.conv import configs, launcher

from ...conftest import DEVICE
from ...numerics import assert_close_to_reference, rel_tol
from .cases import (SHORTCUT_GEOMETRIES, assert_special_values_match, check_geometry,
                    check_pooled_shortcut, check_shortcut, launch, needs_sm_90, operands,
                    reference, tma_config)
from .test_walk_tma import ONE_BY_ONE, PATCHED

FLATTEN = pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])


@pytest.fixture
def persistent():
    """``persistent(flatten)``: a variant running the launch's TMA tiles persistent; under
    the interpreter 16x16 tiles (patches of 16 pixels), on a GPU its own candidates."""
    needs_sm_90()

    def make(flatten):
        def variant(base, consts):
            if not INTERPRETED:
                listed = [c for c in configs.tma_candidates(consts, 2)
                          if c.persistent and c.flatten == flatten]
                if not listed:
                    pytest.skip("sm_90 lists no such persistent candidate for this launch")
                return listed[0]
            config = tma_config(base, consts, patch_pixels=16)
            return config._replace(block_m=config.block_m if config.patch_w else 16,
                                   block_n=16, persistent=True, flatten=flatten)
        return variant
    return make


def _assert_wraps(launches, flatten):
    """The launch ran persistent, on fewer programs than it has tiles (interpreter)."""
    [ran] = launches
    assert ran.config.persistent and ran.config.flatten == flatten and ran.config.tma
    if INTERPRETED:
        batch, _, oh, ow = ran.geometry.output_shape
        tiles = configs.output_tiles(batch * oh * ow, ran.constexprs, ran.config)
        assert ran.grid == (launcher.INTERPRETER_PROGRAMS, 1)
        assert tiles > launcher.INTERPRETER_PROGRAMS, "too few tiles for the loop to wrap"


@FLATTEN
@pytest.mark.parametrize("geometry", ONE_BY_ONE + PATCHED,
                         ids=[g[0] for g in ONE_BY_ONE + PATCHED])
def test_persistent_tiles_match_float64(geometry, flatten, persistent):
    launches = check_geometry(geometry, torch.float16, "residual+relu", persistent(flatten))
    _assert_wraps(launches, flatten)
    assert launches[0].walk == ("tma-rows" if geometry[6] == 1 else "tma-patches")


@FLATTEN
@pytest.mark.parametrize("geometry", [ONE_BY_ONE[-1], PATCHED[-3]],
                         ids=[ONE_BY_ONE[-1][0], PATCHED[-3][0]])
def test_persistent_tiles_in_bfloat16_without_epilogue(geometry, flatten, persistent):
    launches = check_geometry(geometry, torch.bfloat16, "none", persistent(flatten))
    _assert_wraps(launches, flatten)


@FLATTEN
@pytest.mark.parametrize("main,short", [SHORTCUT_GEOMETRIES[0], SHORTCUT_GEOMETRIES[1]],
                         ids=["bottleneck 1x1", "basic 3x3"])
def test_persistent_tiles_with_a_fused_shortcut(main, short, flatten, persistent):
    launches = check_shortcut(main, short, torch.float16, persistent(flatten))
    _assert_wraps(launches, flatten)


@FLATTEN
@pytest.mark.parametrize("kernel,c_in", [(1, 32), (3, 64)], ids=["1x1", "3x3"])
def test_persistent_tiles_with_a_pooled_shortcut(kernel, c_in, flatten, persistent):
    # Odd shortcut sizes: the last windows hang over the border.
    launches = check_pooled_shortcut(13, 11, torch.float16, kernel=kernel, c_in=c_in,
                                     variant=persistent(flatten))
    _assert_wraps(launches, flatten)


@FLATTEN
@pytest.mark.parametrize("kernel", [1, 3])
def test_persistent_tiles_keep_nan_and_inf(kernel, flatten, persistent):
    # A NaN or Inf in a tile a program reaches after wrapping, and in the residual, reach
    # exactly the outputs they feed; the early bias load changes nothing of that.
    x, weight, bias = operands(2, 128, 6, 7, 72, kernel, 1, torch.float16)
    residual = torch.randn(2, 72, 6, 7, device=DEVICE).to(torch.float16)
    x[1, 5, 5, 6], x[1, 9, 4, 0] = float("nan"), float("inf")
    residual[1, 70, 5, 5] = float("nan")
    ref = reference(x, weight, bias, 1, kernel // 2, 1, 1, residual)
    out, launches = launch(x, weight, bias, kernel=kernel, stride=1, padding=kernel // 2,
                           residual=residual, variant=persistent(flatten))
    _assert_wraps(launches, flatten)
    assert_special_values_match(out, ref, rel_tol(torch.float16), "persistent")


def test_a_misaligned_input_runs_by_pointers():
    # No TMA descriptor may point 2 bytes into a storage: the launch falls back to pointer
    # tiles, and a persistent config to one program per tile.
    needs_sm_90()
    n, c, h, w = 1, 128, 6, 7
    storage = torch.randn(n * h * w * c + 1, device=DEVICE).to(torch.float16)
    x = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    weight = (torch.randn(64, c, 1, 1, device=DEVICE) / 12).half()
    bias = torch.randn(64, device=DEVICE)
    config = ConvConfig(16, 16, 64, 4, 1, tma=True, persistent=True, flatten=True)
    out, launches = launch(x, weight, bias, kernel=1, stride=1, padding=0,
                           variant=lambda base, consts: config)
    [ran] = launches
    assert not (ran.config.tma or ran.config.persistent) and ran.walk == "taps"
    assert ran.grid == (configs.output_tiles(h * w, ran.constexprs, ran.config), 1)
    assert_close_to_reference(out, reference(x, weight, bias, 1, 0, 1, 1),
                              rel_tol(torch.float16), "misaligned persistent")


@pytest.mark.parametrize("config,field", [
    (ConvConfig(64, 64, 64, 4, 3, persistent=True), "persistent"),
    (ConvConfig(64, 64, 64, 4, 3, tma=True, persistent=True, split_k=2), "persistent"),
    (ConvConfig(64, 64, 64, 4, 3, tma=True, flatten=True), "flatten"),
])
def test_refused_where_it_cannot_run(config, field):
    consts = ConvGeometry(1, 128, 7, 7, 128, (1, 1), 1, 0, 1, 1, True, False, None,
                          torch.float16).scalars(False, False)[1]
    with pytest.raises(ValueError, match=f"{field} applies to"):
        configs.check_config(config, consts, 2)


def test_programs_are_one_per_sm_on_a_gpu():
    if DEVICE.type != "cuda":
        assert launcher.persistent_programs(DEVICE) == launcher.INTERPRETER_PROGRAMS
    else:
        sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
        assert launcher.persistent_programs(DEVICE) == sms
