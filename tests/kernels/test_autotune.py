"""The persistent tuner (kernels/autotune.py): it picks the fastest candidate, stores the
choice so a new process benchmarks nothing, measures again when anything it depends on
changes, and skips candidates that cannot run.  Timings are faked: no GPU needed."""
import json

import pytest
import torch
import triton

from fusedres import aot, gpu_inspect
from fusedres.kernels import autotune
from fusedres.kernels.conv import configs, launcher

CONFIGS = configs.HALF_TILES


@pytest.fixture
def tuner_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    return tmp_path / "fusedres-autotune"


def _fake_timings(monkeypatch, times_ms):
    """Replace the GPU timing: config i takes times_ms[i]; returns the list of timed configs."""
    timed = []

    def benchmark(run):
        config = run()
        timed.append(config)
        return times_ms[CONFIGS.index(config)]

    monkeypatch.setattr(autotune, "benchmark", benchmark)
    return timed


def _new_tuner():
    # A new Tuner is what a new process has: an empty memory, the same files.
    return autotune.Tuner("conv_bn_act", launcher.KERNEL_SOURCES)


def test_tuner_picks_the_fastest_and_a_new_process_benchmarks_nothing(tuner_folder, monkeypatch):
    times = [5.0, 3.0, 0.5, 4.0, 2.0, 9.0]
    timed = _fake_timings(monkeypatch, times)
    key = ("float16", ("M", 4096), ("KH", 3))
    assert _new_tuner().pick(key, CONFIGS, lambda config: config, "cpu") is CONFIGS[2]
    assert timed == CONFIGS
    assert len(list(tuner_folder.iterdir())) == 1

    timed.clear()
    for tuner in (_new_tuner(), _new_tuner()):
        assert tuner.pick(key, CONFIGS, lambda config: config, "cpu") is CONFIGS[2]
    assert timed == [], "a stored choice was benchmarked again"
    record = json.loads(next(tuner_folder.iterdir()).read_text())
    assert record["config"] == CONFIGS[2].describe()
    assert record["timings_ms"][CONFIGS[0].describe()] == 5.0


@pytest.mark.parametrize("change", ["key", "device", "configs", "triton", "source"])
def test_tuner_measures_again_when_anything_it_depends_on_changes(tuner_folder, monkeypatch,
                                                                  change, tmp_path):
    timed = _fake_timings(monkeypatch, [1.0] * len(CONFIGS))
    key, configs, device = ("float16", ("M", 64)), CONFIGS, "cpu"
    _new_tuner().pick(key, configs, lambda c: c, device)
    timed.clear()
    tuner = _new_tuner()
    if change == "key":
        key = ("float16", ("M", 128))
    elif change == "device":
        device = "meta"
    elif change == "configs":
        configs = CONFIGS[:3]
    elif change == "triton":
        monkeypatch.setattr(triton, "__version__", triton.__version__ + ".post1")
    else:
        source = tmp_path / "kernel.py"
        source.write_text(open(launcher.KERNEL_SOURCES[0]).read() + "\n# edited\n")
        tuner = autotune.Tuner("conv_bn_act", [str(source), *launcher.KERNEL_SOURCES[1:]])
    tuner.pick(key, configs, lambda c: c, device)
    assert timed == list(configs)


def test_a_candidate_that_cannot_run_here_is_skipped(tuner_folder, monkeypatch):
    from triton.runtime.errors import OutOfResources
    times = [1.0, 0.5, 2.0, 3.0, 4.0, 5.0]

    def benchmark(run):
        config = run()
        if config is CONFIGS[1]:  # the fastest on paper needs more shared memory than there is
            raise OutOfResources(300000, 232448, "shared memory")
        return times[CONFIGS.index(config)]

    monkeypatch.setattr(autotune, "benchmark", benchmark)
    assert _new_tuner().pick(("k",), CONFIGS, lambda c: c, "cpu") is CONFIGS[0]
    record = json.loads(next(tuner_folder.iterdir()).read_text())
    assert record["timings_ms"][CONFIGS[1].describe()] == float("inf")


def test_when_no_candidate_can_run_the_real_error_is_raised(tuner_folder, monkeypatch):
    from triton.runtime.errors import OutOfResources

    def run(config):
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(autotune, "benchmark", lambda fn: fn())
    with pytest.raises(OutOfResources):
        _new_tuner().pick(("k",), CONFIGS, run, "cpu")


def test_choices_in_memory_are_per_device(tuner_folder, monkeypatch):
    timed = _fake_timings(monkeypatch, [1.0] * len(CONFIGS))
    tuner = _new_tuner()
    tuner.pick(("k",), CONFIGS, lambda c: c, "cpu")
    tuner.pick(("k",), CONFIGS, lambda c: c, "meta")
    assert timed == CONFIGS + CONFIGS


def test_a_corrupt_store_is_measured_again(tuner_folder, monkeypatch):
    timed = _fake_timings(monkeypatch, [3.0, 1.0, 2.0, 4.0, 5.0, 6.0])
    _new_tuner().pick(("k",), CONFIGS, lambda c: c, "cpu")
    next(tuner_folder.iterdir()).write_text("{not json")
    timed.clear()
    assert _new_tuner().pick(("k",), CONFIGS, lambda c: c, "cpu") is CONFIGS[1]
    assert timed == CONFIGS


@pytest.mark.parametrize("value,expected", [("0", False), ("off", False), ("False", False),
                                            ("1", True), ("", True)])
def test_autotune_switch(monkeypatch, value, expected):
    monkeypatch.setenv("FUSEDRES_AUTOTUNE", value)
    assert autotune.enabled() is expected


def test_without_autotuning_the_launcher_uses_the_default_and_times_nothing(monkeypatch):
    monkeypatch.setenv("FUSEDRES_AUTOTUNE", "0")
    monkeypatch.setattr(autotune, "benchmark", lambda run: pytest.fail("benchmarked"))
    geometry = gpu_inspect.specialisations("resnet50", torch.float16)[0]
    ints, consts = geometry.scalars(allow_tf32=True, interpreted=False)
    launched = []
    config = launcher.choose_config(ints, consts, torch.float16, launched.append, "cpu")
    assert launched == []
    assert config == configs.default_config(ints["M"], consts, 2)
    assert aot.candidate_configs(geometry) == [config]


@pytest.mark.parametrize("capturable", [True, False])
def test_candidates_are_timed_in_gpu_time_where_they_can_be_captured(monkeypatch, capturable):
    """GPU time from a CUDA graph replay; do_bench's event timing only where capture fails."""
    calls = []

    def cudagraph(run, rep, return_mode):
        calls.append("cudagraph")
        if not capturable:
            raise RuntimeError("operation not permitted when stream is capturing")
        return 2.0

    def events(run, warmup, rep, return_mode):
        calls.append("events")
        return 3.0

    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", cudagraph)
    monkeypatch.setattr(triton.testing, "do_bench", events)
    assert autotune.benchmark(lambda: None) == (2.0 if capturable else 3.0)
    assert calls == (["cudagraph"] if capturable else ["cudagraph", "events"])
