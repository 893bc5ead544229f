"""kernels/conv/cudnn.py: the cuDNN backend, the tuner's ``cudnn`` candidate.

Its computation (torch ops on the launcher's packed weights) against float64 for every
geometry and epilogue, the shortcut, the pooled shortcut and NaN/Inf, through the launcher
with an explicit ``configs.CUDNN`` (on CPU tensors: the same ops, minus cuDNN itself); when
the tuner offers it and how it picks and stores it, from fake timings (the switch itself:
tests/kernels/conv/test_backends.py).  GPU-marked: bit-for-bit eager's conv + bias + add +
ReLU."""
import pytest
import torch
import torch.nn.functional as F

from fusedres.kernels import autotune, pack_weight, runtime
from fusedres.kernels.conv import configs, cudnn, launcher

from ...conftest import DEVICE
from .cases import (DTYPES, GEOMETRIES, SHORTCUT_GEOMETRIES, SHORTCUT_IDS, check_geometry,
                    check_nan_and_inf, check_pooled_shortcut, check_shortcut)


def _cudnn(base, consts):
    return configs.CUDNN


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("epilogue", ["relu", "residual+relu", "none"])
def test_geometry_matches_float64(geometry, dtype, epilogue):
    launches = check_geometry(geometry, dtype, epilogue, _cudnn)
    assert [(launch.config, launch.walk) for launch in launches] == [(configs.CUDNN, "cudnn")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("main,shortcut_geometry", SHORTCUT_GEOMETRIES, ids=SHORTCUT_IDS)
def test_shortcut_matches_float64(main, shortcut_geometry, dtype):
    assert len(check_shortcut(main, shortcut_geometry, dtype, _cudnn)) == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hs,ws", [(5, 7), (4, 5), (1, 1)])
def test_pooled_shortcut_matches_float64(hs, ws, dtype):
    check_pooled_shortcut(hs, ws, dtype, variant=_cudnn)


@pytest.mark.parametrize("where", ["input", "shortcut input", "residual", "padding border"])
def test_nan_and_inf_land_where_the_reference_puts_them(where):
    assert len(check_nan_and_inf(where, _cudnn)) == 1


def test_torch_layout_is_made_once_per_weight():
    packed = pack_weight(torch.randn(8, 4, 3, 3), torch.float32)
    bias = torch.randn(8)
    first = cudnn._torch_layout(packed, bias, 3, 3, torch.float32)
    assert cudnn._torch_layout(packed, bias, 3, 3, torch.float32) is first
    assert first[0].is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        packed.mul_(2)  # an in-place edit: made again
    again = cudnn._torch_layout(packed, bias, 3, 3, torch.float32)
    assert again is not first and torch.equal(again[0], 2 * first[0])
    key = id(packed)
    del packed, first, again
    assert key not in cudnn._LAYOUTS  # gone with its weight


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """choose_config for a CUDA device without one: sm_90, 132 SMs, a fresh tuner storing
    into tmp_path, timings from ``times[config.describe()]`` (default 1 ms)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "arch", lambda device: 90)
    monkeypatch.setattr(runtime, "sm_count", lambda device: 132)
    monkeypatch.setattr(autotune, "_device_name", lambda device: "stand-in GPU")
    times, timed = {}, []

    def benchmark(run):
        config = run()
        timed.append(config)
        return times.get(config.describe(), 1.0)

    monkeypatch.setattr(autotune, "benchmark", benchmark)

    def choose(geometry):
        monkeypatch.setattr(launcher, "TUNER", autotune.Tuner("conv_bn_act",
                                                               launcher.KERNEL_SOURCES))
        ints, consts = geometry.scalars(allow_tf32=False, interpreted=False)
        return launcher.choose_config(ints, consts, geometry.dtype, lambda config: config,
                                      torch.device("cuda"))
    return times, timed, choose


@pytest.mark.parametrize("cudnn_ms,picked", [(0.5, True), (2.0, False)])
def test_tuner_picks_cudnn_by_its_time_and_stores_it(fake_gpu, cudnn_ms, picked):
    from fusedres import gpu_inspect
    times, timed, choose = fake_gpu
    geometry = gpu_inspect.specialisations("resnet50", torch.float16)[3]
    times["cudnn"] = cudnn_ms
    config = choose(geometry)
    assert configs.CUDNN in timed and len(timed) > 1
    assert (config == configs.CUDNN) is picked
    timed.clear()
    assert choose(geometry) == config and timed == []  # a new tuner reads the stored choice


def test_triton_only_leaves_cudnn_out(fake_gpu, monkeypatch):
    from fusedres import gpu_inspect
    times, timed, choose = fake_gpu
    geometry = gpu_inspect.specialisations("resnet18", torch.float16)[2]
    times["cudnn"] = 0.01
    monkeypatch.setenv("FUSEDRES_BACKENDS", "triton")
    assert choose(geometry) != configs.CUDNN
    assert timed and configs.CUDNN not in timed


@pytest.mark.gpu
@pytest.mark.parametrize("residual", [False, True])
def test_gpu_matches_eager_bit_for_bit(residual):
    """cuDNN through the launcher is eager's conv (folded weight and bias) + add + ReLU."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        _check_bit_for_bit(residual)


def _check_bit_for_bit(residual):
    x = torch.randn(8, 64, 28, 28, device=DEVICE).half().contiguous(
        memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, device=DEVICE).half()
    b = torch.randn(64, device=DEVICE)
    res = torch.randn(8, 64, 28, 28, device=DEVICE).half() if residual else None
    out = launcher.conv_bn_act(x, pack_weight(w, torch.float16), b, kernel_size=3, padding=1,
                               residual=res, config=configs.CUDNN)
    eager = F.conv2d(x, w.contiguous(memory_format=torch.channels_last), b.half(), 1, 1)
    if residual:
        eager = eager + res
    assert torch.equal(out, torch.relu(eager))
