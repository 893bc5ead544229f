"""The speedup gate (benchmarks/gate.py) on synthetic statistics, and its pytest wiring
(benchmarks/conftest.py) on a tiny generated benchmark file run in a subprocess."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import gate

REPO = Path(__file__).resolve().parents[1]


def entry(name, contender, median, error=False, gpu_ms=None, **params):
    """A stand-in for pytest-benchmark's Metadata: what gate.results_from_benchmarks reads."""
    stats = SimpleNamespace(median=median)
    extra_info = {} if gpu_ms is None else {"gpu_ms": gpu_ms}
    return SimpleNamespace(name=f"{name}[x]", params=dict(params, contender=contender),
                           stats=stats, has_error=error, extra_info=extra_info)


def test_comparisons_with_gpu_time_on_every_entry_are_judged_by_it():
    """A host-bound layer: wall times say fused loses, GPU times that it wins.  Where one
    entry lacks its GPU time, the comparison stays in wall time."""
    entries = [entry("test_layer", "eager", 0.10, gpu_ms=40.0, layer="a"),
               entry("test_layer", "fused", 0.20, gpu_ms=20.0, layer="a"),
               entry("test_layer", "eager", 0.10, gpu_ms=40.0, layer="b"),
               entry("test_layer", "fused", 0.20, layer="b")]
    ratios = gate.compute_ratios(gate.results_from_benchmarks(entries))
    assert [(r.time, r.speedup) for r in ratios] == [("gpu", 2.0), ("wall", 0.5)]
    assert "gpu" in gate.format_table(gate.judge(ratios, 1.0), 1.0)


def verdict_for(entries, threshold):
    return gate.judge(gate.compute_ratios(gate.results_from_benchmarks(entries)), threshold)


def test_twins_pair_by_test_and_parameters():
    entries = [entry("test_model", "eager", 2.0, model="resnet18", batch=1),
               entry("test_model", "fused", 1.0, model="resnet18", batch=1),
               entry("test_model", "eager", 3.0, model="resnet18", batch=8),
               entry("test_model", "fused", 2.0, model="resnet18", batch=8),
               entry("test_layer", "eager", 9.0, model="resnet18", batch=1)]
    ratios = gate.compute_ratios(gate.results_from_benchmarks(entries))
    assert [(r.key, r.speedup) for r in ratios] == [
        ("test_model[batch=1,model=resnet18]", 2.0), ("test_model[batch=8,model=resnet18]", 1.5)]


def test_passes_when_every_ratio_reaches_the_threshold():
    verdict = verdict_for([entry("t", "eager", 1.2, b=1), entry("t", "fused", 1.0, b=1),
                           entry("t", "eager_nchw", 1.5, b=1)], 1.2)
    assert verdict.passed
    table = gate.format_table(verdict, 1.2)
    assert "1.200x" in table and "1.500x" in table and "PASSED" in table


def test_fails_when_one_ratio_is_below_the_threshold():
    verdict = verdict_for([entry("t", "eager", 3.0, b=1), entry("t", "fused", 1.0, b=1),
                           entry("t", "eager", 1.0, b=2), entry("t", "fused", 1.25, b=2)], 1.05)
    assert not verdict.passed
    assert verdict.failures == ["t[b=2]: fused/eager speedup 0.800x < 1.05x"]
    table = gate.format_table(verdict, 1.05)
    assert "3.000x" in table and "0.800x" in table  # every measured ratio is shown
    assert "FAILED: 1 of 2" in table


def test_missing_eager_twin_fails_and_is_named():
    verdict = verdict_for([entry("t", "fused", 1.0, b=1), entry("t", "eager", 1.0, b=2),
                           entry("t", "eager", 5.0, b=1, error=True)], 0.0)
    assert verdict.failures == ["t[b=1]: no eager twin measured in this run"]


def test_entries_without_a_contender_are_ignored():
    plain = SimpleNamespace(name="test_other", params=None, stats=SimpleNamespace(median=1.0),
                            has_error=False)
    assert gate.results_from_benchmarks([plain]) == []


def test_auto_threshold_is_the_documented_device_default():
    assert gate.resolve_threshold("auto", "cpu") == (gate.DEFAULT_MIN_SPEEDUP["cpu"],
                                                     "default for cpu")
    assert gate.resolve_threshold("1.5", "cuda") == (1.5, "--min-speedup")


# A pair recorded with fixed times (fused 2x faster), so the plugin runs without torch timing;
# named like a model benchmark, which the gate checks on every device.
PAIR_FILE = """
from benchmarks import recording

def test_model(benchmark):
    if benchmark.disabled:
        recording.mark_used(benchmark)
        return
    recording.record(benchmark, "eager", [0.002] * 5, {})
    recording.record(benchmark, "fused", [0.001] * 5, {})
"""


def run_plugin(tmp_path, *args):
    (tmp_path / "test_pair.py").write_text(textwrap.dedent(PAIR_FILE))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "benchmarks.conftest",
                           "-p", "no:cacheprovider", "-q", "test_pair.py", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("threshold,status,word", [("1.9", 0, "PASSED"), ("2.1", 1, "FAILED")])
def test_plugin_sets_the_exit_status(tmp_path, threshold, status, word):
    done = run_plugin(tmp_path, "--min-speedup", threshold)
    assert done.returncode == status, done.stdout + done.stderr
    assert "test_model " in done.stdout and "2.000x" in done.stdout and word in done.stdout


def test_plugin_says_it_does_nothing_with_benchmark_disable(tmp_path):
    done = run_plugin(tmp_path, "--benchmark-disable", "--min-speedup", "100")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "benchmarks are disabled (--benchmark-disable)" in done.stdout


def test_on_cpu_only_models_can_fail_layers_are_reported():
    entries = [entry("test_model", "eager", 1.2, b=1), entry("test_model", "fused", 1.0, b=1),
               entry("test_layer", "eager", 0.5, b=1), entry("test_layer", "fused", 1.0, b=1)]
    ratios = gate.compute_ratios(gate.results_from_benchmarks(entries))
    cpu = gate.gated_for("cpu")
    verdict = gate.judge(ratios, 0.9, cpu)
    assert verdict.passed
    table = gate.format_table(verdict, 0.9, cpu)
    assert "report" in table and "1 gated comparisons" in table
    # A GPU gates every comparison, and a slow CPU model still fails.
    assert not gate.judge(ratios, 0.9, gate.gated_for("cuda")).passed
    assert not gate.judge(ratios, 1.5, cpu).passed
