"""Ahead-of-time compiling (fusedres/aot.py): the compiles land under exactly the JIT cache
keys the launches look up, each for its own target, and the worker processes report their
errors and never outlive a terminated parent.  No GPU needed."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fusedres import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run without the interpreter (the JIT computes real cache keys) and with a stand-in driver
# for sm_90 (the launcher told it runs there, so the sm_90-only candidates, TMA tiles, are
# among them, and split-K is sized for the usual 132 SMs): for each model, the keys of every
# kernel `fusedres warmup` compiles, and the keys of every kernel a forward on real tensors
# launches with a fresh tuner (which launches each candidate once to time it, so every
# candidate's key appears).  Both are collected through Triton's jit_cache_hook, which also
# skips the compiles.
_KEYS_SCRIPT = textwrap.dedent("""
    import json, os, sys, tempfile
    import torch
    import fusedres
    from fusedres import aot, ops, trace
    from fusedres.kernels import autotune, cudnn_allows_tf32, runtime
    from fusedres.kernels.conv import launcher

    autotune.benchmark = lambda run: (run(), 1.0)[1]
    ops.uses_triton = lambda x: x.device.type == "cpu"   # real CPU tensors take the kernel path
    runtime.arch = lambda device: 90
    report = []
    for name, dtype in (("resnet18", "float16"), ("resnet50", "float16"),
                        ("resnet18", "float32")):
        dtype = getattr(torch, dtype)
        model = getattr(fusedres, name)().eval().to(dtype)
        batch, size = 8, (224, 224)
        geometries = trace.unique(trace.trace_launches(model, batch, size, dtype))
        with aot.target_driver(90), aot.jit_cache_keys() as warm:
            for geometry in geometries:
                for config in aot.candidate_configs(geometry, arch=90):
                    aot.compile_here(aot.Job(geometry, config, 90, cudnn_allows_tf32()))
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()   # nothing tuned yet
        launcher.forget_choices()
        x = torch.randn(batch, 3, *size, dtype=dtype)
        with aot.target_driver(90), aot.jit_cache_keys() as launched, torch.inference_mode():
            model(x)
        configs = [c for geometry in geometries for c in aot.candidate_configs(geometry, arch=90)]
        # A split-K config compiles two kernels: the convolution and its epilogue.
        report.append(dict(model=name, dtype=str(dtype), geometries=len(geometries),
                           jobs=len(configs), split=sum(c.split_k > 1 for c in configs),
                           tma=sum(c.tma for c in configs),
                           patches=sum(c.patch_w > 0 for c in configs),
                           warm=warm, launched=launched))
    # Targets in turn in one process (as a worker that gets jobs for both): each compile
    # must be for its own target.
    geometry = geometries[-1]
    with aot.jit_cache_keys() as targets:
        for arch in (80, 90, 80):
            aot.compile_here(aot.Job(geometry, aot.candidate_configs(geometry)[0], arch, True))
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
            assert case["patches"] > 0, label
            assert case["tma"] > case["patches"] * (label == "resnet50"), label
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
