"""The first call's cost: ahead-of-time compiles that the JIT really reuses, a tuner whose
choices persist across processes, the default config without tuning, and a source checkout
that runs without installation.  No GPU needed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import triton

import fusedres
from fusedres import aot, gpu_inspect
from fusedres.kernels import autotune
from fusedres.kernels import fused_conv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run without the interpreter (the JIT computes real cache keys) and with a stand-in driver
# for sm_90 (the launcher told it runs there, so the sm_90-only candidates, TMA tiles, are
# among them): for each model, the keys of every kernel `fusedres warmup` compiles, and the
# keys of every kernel a forward on real tensors launches with a fresh tuner (which launches
# each candidate once to time it, so every candidate's key appears).  Both are collected
# through Triton's jit_cache_hook, which also skips the compiles.
_KEYS_SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile
    import torch
    import fusedres
    from fusedres import aot, ops, trace
    from fusedres.kernels import autotune, fused_conv

    autotune.benchmark = lambda run: (run(), 1.0)[1]
    ops.uses_triton = lambda x: x.device.type == "cpu"   # real CPU tensors take the kernel path
    fused_conv._arch = lambda device: 90
    report = []
    for name, dtype in (("resnet18", "float16"), ("resnet50", "float16"),
                        ("resnet18", "float32")):
        dtype = getattr(torch, dtype)
        model = getattr(fusedres, name)().eval().to(dtype)
        batch, size = 8, (224, 224)
        specs = trace.unique(trace.trace_launches(model, batch, size, dtype))
        with aot.target_driver(90), aot.jit_cache_keys() as warm:
            for spec in specs:
                for config in aot.candidate_configs(spec, arch=90):
                    aot.compile_here(aot.Job(spec, config, 90, fused_conv.cudnn_allows_tf32()))
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()   # nothing tuned yet
        fused_conv._TUNER.forget()
        x = torch.randn(batch, 3, *size, dtype=dtype)
        with aot.target_driver(90), aot.jit_cache_keys() as launched, torch.inference_mode():
            model(x)
        configs = [c for spec in specs for c in aot.candidate_configs(spec, arch=90)]
        # A split-K config compiles two kernels: the convolution and its epilogue.
        report.append(dict(model=name, dtype=str(dtype), geometries=len(specs),
                           jobs=len(configs), split=sum(c.split_k > 1 for c in configs),
                           tma=sum(c.tma for c in configs),
                           patches=sum(c.patch_w > 0 for c in configs),
                           warm=warm, launched=launched))
    # Targets in turn in one process (as a worker that gets jobs for both): each compile
    # must be for its own target.
    spec = specs[-1]
    with aot.jit_cache_keys() as targets:
        for arch in (80, 90, 80):
            aot.compile_here(aot.Job(spec, aot.candidate_configs(spec)[0], arch, True))
    json.dump(dict(models=report, targets=[key.split("|")[0] for key in targets]), sys.stdout)
""")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(extra)
    return env


def test_warmup_compiles_exactly_the_keys_the_launches_look_up(tmp_path):
    out = subprocess.run([sys.executable, "-c", _KEYS_SCRIPT], cwd=REPO, capture_output=True,
                         text=True, env=_clean_env(TRITON_CACHE_DIR=str(tmp_path)), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["targets"] == ["sm80", "sm90", "sm80"]
    for case in result["models"]:
        warm, launched = set(case["warm"]), set(case["launched"])
        label = f"{case['model']} {case['dtype']}"
        assert case["geometries"] >= 15, label
        # Every geometry times every candidate was compiled ahead...
        assert len(case["warm"]) == case["jobs"] + case["split"], label
        assert case["jobs"] > case["geometries"] * 3 and case["split"] > 0, label
        if case["dtype"] == "torch.float16":  # TMA: 1x1 rows (ResNet-50) and 3x3 patches
            assert case["patches"] > 0 and case["tma"] > case["patches"] * (label == "resnet50"), label
        # ...for sm_90, and the launches looked up exactly those keys: nothing missing,
        # nothing extra.
        assert all(key.startswith("sm90|") for key in warm), label
        assert launched == warm, (label, sorted(launched - warm)[:2], sorted(warm - launched)[:2])


def test_a_failing_compile_worker_reports_its_error_output(monkeypatch):
    monkeypatch.setattr(aot, "_WORKER", "import sys; sys.stderr.write('detail of the failure'); "
                                        "sys.exit(3)")
    with pytest.raises(RuntimeError, match="(?s)status 3.*detail of the failure"):
        aot.compile_in_workers([0], workers=1)


_TERMINATED_SCRIPT = """
from fusedres import aot
aot._WORKER = ("import os, time; open(os.environ['WORKER_PID'], 'w').write(str(os.getpid())); "
               "time.sleep(300)")
aot.compile_in_workers([0], workers=1)
"""


def test_sigterm_stops_the_compile_workers_too(tmp_path):
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, "-c", _TERMINATED_SCRIPT], cwd=REPO,
                              env=_clean_env(WORKER_PID=str(pid_file)))
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()):
            assert parent.poll() is None and time.monotonic() < deadline, "no worker started"
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while _alive(worker):
            assert time.monotonic() < deadline, f"worker {worker} outlived its parent"
            time.sleep(0.1)
    finally:
        parent.kill()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- the persistent tuner

CONFIGS = fused_conv.HALF_CONFIGS


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
    return autotune.Tuner("conv_bn_act", fused_conv.__file__)


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
    assert record["config"] == autotune.describe(CONFIGS[2])
    assert record["timings_ms"][autotune.describe(CONFIGS[0])] == 5.0


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
        source.write_text(open(fused_conv.__file__).read() + "\n# edited\n")
        tuner = autotune.Tuner("conv_bn_act", str(source))
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
    assert record["timings_ms"][autotune.describe(CONFIGS[1])] == float("inf")


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
    spec = gpu_inspect.specialisations("resnet50", torch.float16)[0]
    ints, consts = fused_conv.launch_scalars(**spec._asdict(), allow_tf32=True,
                                             interpreted=False)
    launched = []
    config = fused_conv.choose_config(ints, consts, torch.float16, launched.append, "cpu")
    assert launched == []
    assert config is fused_conv.default_config(ints["M"], consts, 2)
    assert [c.describe() for c in aot.candidate_configs(spec)] == [
        aot.TileConfig.from_triton(config).describe()]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_default_config_is_a_candidate_for_every_geometry(dtype):
    size = torch.empty((), dtype=dtype).element_size()
    for model in ("resnet18", "resnet50"):
        for batch in (1, 256):
            for spec in gpu_inspect.specialisations(model, dtype, batch):
                ints, consts = fused_conv.launch_scalars(**spec._asdict(), allow_tf32=True,
                                                         interpreted=False)
                config = fused_conv.default_config(ints["M"], consts, size)
                assert config in fused_conv.candidates(consts, size)
                # Padded tap-major convolutions run the first design's loop by default on
                # the tiles that have it as a candidate.
                classic = (consts["PAD"] > 0 and not consts["GATHER_K"]
                           and config.kwargs["BLOCK_N"] == 128)
                assert config.kwargs["LEAN_K"] is not classic
    # Large grids get the wide tile (the first listed one: 128x128x64), batch 1's layer4 a
    # small one.
    layer = {"C_out": 256, "GROUPS": 1, "PAD": 0, "GATHER_K": False}
    wide = fused_conv.default_config(256 * 56 * 56, layer, 2)
    assert autotune.describe(wide) == "128x128x64 w8 s3 LEAN_K=True"
    assert fused_conv.default_config(49, dict(layer, C_out=512), 2).kwargs["BLOCK_M"] == 64


def test_sm_90_candidates_all_fill_a_warpgroup():
    # A 2-warp tile compiles to HMMA, not wgmma, on sm_90: listed for sm_80 only.
    for dtype in (torch.float16, torch.float32):
        _, consts = fused_conv.launch_scalars(
            batch=1, c_in=256, height=14, width=14, c_out=256, kernel_size=(3, 3), stride=1,
            padding=1, dilation=1, groups=1, relu=True, residual=True, shortcut=None,
            dtype=dtype, allow_tf32=True, interpreted=False)
        m, size = 14 * 14, dtype.itemsize
        assert min(c.num_warps for c in fused_conv.candidates(consts, size, m, 80)) == 2
        assert min(c.num_warps for c in fused_conv.candidates(consts, size, m, 90)) >= 4


def test_padded_convolutions_try_both_k_loops():
    _, padded = fused_conv.launch_scalars(
        batch=8, c_in=64, height=56, width=56, c_out=64, kernel_size=(3, 3), stride=1,
        padding=1, dilation=1, groups=1, relu=True, residual=False, shortcut=None,
        dtype=torch.float16, allow_tf32=False, interpreted=False)
    # The first design's loop on the two wide tiles; not where split-K takes their place.
    assert [c.kwargs["LEAN_K"] for c in fused_conv.candidates(padded, 2)] == [True] * 6 + [False] * 2
    assert {c.kwargs["LEAN_K"] for c in fused_conv.candidates(padded, 2, m=3136)} == {True}
    assert {c.kwargs["LEAN_K"] for c in fused_conv.candidates(padded, 2, m=49)} == {True}
    assert {c.kwargs["LEAN_K"] for c in fused_conv.candidates(dict(padded, PAD=0), 2)} == {True}
    assert {c.kwargs["LEAN_K"] for c in fused_conv.candidates(dict(padded, GATHER_K=True), 4)} \
        == {True}


# ---------------------------------------------------------------- running from a checkout

def test_runs_from_a_source_checkout_without_installation(tmp_path):
    checkout = tmp_path / "checkout"
    for folder in ("fusedres", "kernels"):
        shutil.copytree(os.path.join(REPO, folder), checkout / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import fusedres, fusedres.kernels as k; from fusedres.kernels import fused_conv; "
              "print(k.__file__); print(fused_conv.__file__); print(fusedres.kernels is k)")
    out = subprocess.run([sys.executable, "-c", script], cwd=checkout, capture_output=True,
                         text=True, env=_clean_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    kernels_file, module_file, same = out.stdout.split()
    # The checkout's own kernels, not the installed (editable) ones.
    assert kernels_file == str(checkout / "kernels" / "__init__.py")
    assert module_file == str(checkout / "kernels" / "fused_conv.py")
    assert same == "True"


def test_warmup_needs_a_gpu_input():
    model = fusedres.resnet18()
    with pytest.raises(ValueError, match="GPU kernels"):
        fusedres.warmup(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        fusedres.warmup(model, torch.randn(3, 32, 32))


def test_warmup_cli_without_a_gpu_asks_for_a_target(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from fusedres import cli
    assert cli.main(["warmup", "--model", "resnet18", "--dtype", "float16"]) == 2
    assert "--arch" in capsys.readouterr().err


@pytest.mark.parametrize("version,ok", [("3.6.0", True), ("3.8.0", True), ("3.5.1", False),
                                        ("3.9.0", False)])
def test_inspect_names_the_tested_triton_range(version, ok):
    from fusedres.gpu_inspect import check_triton_version
    if ok:
        check_triton_version(version)
    else:
        with pytest.raises(RuntimeError, match="tested with Triton 3.6 to 3.8"):
            check_triton_version(version)


@pytest.mark.gpu
def test_an_autotuned_launch_is_right_and_its_choice_is_stored(tuner_folder, monkeypatch):
    # The GPU stages run with FUSEDRES_AUTOTUNE=0; this one launch goes through the tuner.
    monkeypatch.setenv("FUSEDRES_AUTOTUNE", "1")
    fused_conv._TUNER.forget()
    x = torch.randn(2, 64, 14, 14, device="cuda", dtype=torch.float16)
    weight = torch.randn(64, 64, 3, 3, device="cuda") / 24
    bias = torch.randn(64, device="cuda")
    out = fused_conv.conv_bn_act(x, fusedres.kernels.pack_weight(weight, torch.float16), bias,
                                 kernel_size=3, padding=1, relu=False)
    ref = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    assert torch.linalg.norm(out.double() - ref) / torch.linalg.norm(ref) < 5e-3
    assert len(fused_conv._TUNER.chosen()) == 1
    assert len(list(tuner_folder.iterdir())) == 1


@pytest.mark.gpu
def test_warmup_on_the_gpu_leaves_nothing_to_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSEDRES_AUTOTUNE", "0")  # one config per geometry: a short test
    model = fusedres.resnet18().cuda().half().eval()
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.half)
    report = fusedres.warmup(model, x)
    assert report.failures == [] and report.compiles == report.geometries >= 15
    cubins = len(list(tmp_path.rglob("*.cubin")))
    with torch.inference_mode():
        model(x)
    assert len(list(tmp_path.rglob("*.cubin"))) == cubins, "the forward compiled something"
