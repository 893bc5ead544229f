"""pytest plugin for the benchmark suites: options, the interleaved pair fixture, machine
info, and the in-run speedup gate (logic in ``benchmarks/gate.py``).

    pytest benchmarks/ --benchmark-only                     # gate at the device's default
    pytest benchmarks/ --benchmark-only --min-speedup 1.2   # explicit threshold
    pytest benchmarks/ --benchmark-only --min-speedup 0     # table only, never fails

torch is imported lazily, so loading this plugin (and ``--help``) stays fast.
"""
import os

import pytest

from benchmarks import gate, recording

# Per comparison: seconds of interleaved timing after warm-up, and the round limits.
PAIR_BUDGET_S = {"cpu": 1.5, "cuda": 0.5}
MIN_ROUNDS = 7
MAX_ROUNDS = {"cpu": 200, "cuda": 500}
WARMUP_CALLS = 3  # the first call autotunes / compiles; later ones settle caches and clocks
# One CPU thread: on a shared 2-core machine a second OpenMP thread is often descheduled,
# and every barrier then waits for it, which turns round times bimodal (1 ms or 40 ms);
# single-threaded rounds slow down smoothly under load, so the eager/fused ratio holds.
CPU_THREADS = 1


def pytest_addoption(parser):
    group = parser.getgroup("fusedres speedup gate")
    group.addoption("--min-speedup", default="auto", metavar="X",
                    help="fail the run if any fused benchmark's median(eager)/median(fused) "
                         "is below X; 'auto' (default): the documented default for the device "
                         f"({', '.join(f'{d} {v:g}' for d, v in gate.DEFAULT_MIN_SPEEDUP.items())})"
                         "; 0 shows the table without failing")
    group.addoption("--bench-compile", default="auto", choices=["auto", "on", "max", "off"],
                    help="time torch.compile (default mode) as a contender; max: also "
                         "compile_max (mode=max-autotune with freezing, CUDA; compiling takes "
                         "minutes); auto: on on CUDA only (compiling on CPU costs minutes)")
    group.addoption("--bench-threads", type=int, default=None, metavar="N",
                    help="torch intra-op threads for CPU benchmarks (default: 1, see "
                         "docs/benchmarks.md)")
    group.addoption("--bench-model", action="append", default=None, metavar="NAME",
                    help="whole-model benchmarks of this model instead of the default set "
                         "(repeatable): a torchvision ResNet name or timm:<name>, e.g. "
                         "timm:resnet50d")


def bench_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_configure(config):
    config._fusedres_gate = None


@pytest.fixture(scope="session")
def device(request):
    import torch
    from fusedres import kernels
    dev = bench_device()
    if dev.type == "cpu" and kernels.INTERPRETED:
        # The interpreter is the test suite's way to check kernels; timing it means nothing.
        pytest.fail("CPU benchmarks must not run with TRITON_INTERPRET=1 (the fused CPU path "
                    "to time is the folded torch-ops path); unset it and run "
                    "`pytest benchmarks/` on its own", pytrace=False)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(request.config.getoption("--bench-threads") or CPU_THREADS)
    return dev


@pytest.fixture(scope="session")
def use_compile(request, device):
    """``model_contenders``' compile_model: False, True (default mode) or "max" (both modes)."""
    choice = request.config.getoption("--bench-compile")
    if choice == "max":
        return "max"
    return choice == "on" or (choice == "auto" and device.type == "cuda")


def _split_times(fn, device):
    """``host_ms`` (the call's host work) and, where measured, ``gpu_ms`` (its GPU time)."""
    from fusedres import timing
    split = {"host_ms": round(timing.host_time(fn, device) * 1e3, 4)}
    gpu_s = timing.gpu_time(fn, device)
    if gpu_s is not None:
        split["gpu_ms"] = round(gpu_s * 1e3, 4)
    return split


@pytest.fixture
def measure_pair(benchmark, device):
    """``measure_pair(contenders, extra_info_for, budget_s=None)``: time
    ``{contender: callable}`` interleaved and record one benchmark entry per contender.
    ``extra_info_for(median_s)`` gives each entry's extra_info; ``budget_s`` overrides the
    device's PAIR_BUDGET_S; ``split_times`` adds each contender's ``gpu_ms`` (CUDA: GPU time
    alone, which the gate then judges by) and ``host_ms``.  With --benchmark-disable each
    contender runs once."""
    from fusedres import timing

    def measure(contenders, extra_info_for, budget_s=None, split_times=False):
        if benchmark.disabled:
            for fn in contenders.values():
                fn()
            recording.mark_used(benchmark)
            return
        first = {}
        last = timing.warm_up(contenders, device, WARMUP_CALLS, first)
        budget = budget_s if budget_s is not None else PAIR_BUDGET_S[device.type]
        rounds = timing.rounds_for_budget(sum(last.values()), budget,
                                          MIN_ROUNDS, MAX_ROUNDS[device.type])
        times = timing.interleaved(contenders, device, rounds)
        for name, series in times.items():
            extra = {**extra_info_for(timing.median(series)),
                     "first_call_s": round(first[name], 3)}
            if split_times:
                extra.update(_split_times(contenders[name], device))
            recording.record(benchmark, name, series, extra)

    return measure


def pytest_benchmark_update_machine_info(config, machine_info):
    from fusedres.bench import environment
    machine_info["fusedres"] = environment(bench_device())


def _write_kernel_report(path):
    """What ptxas really made of every kernel this process launched (registers, spills), to
    compare with ``fusedres inspect``'s reading of the same cubins.  Reads the JIT's
    per-device cache, a Triton internal: a report, never a reason to fail the run."""
    import json
    from fusedres.kernels.conv import launcher
    rows = []
    try:
        jit_caches = [c for jit in launcher.JIT_FUNCTIONS for c in jit.device_caches.values()]
        for caches in jit_caches:
            for key, kernel in caches[0].items():
                meta = kernel.metadata
                rows.append({"key": str(key), "n_regs": kernel.n_regs,
                             "n_spills": kernel.n_spills, "num_warps": meta.num_warps,
                             "num_stages": meta.num_stages, "shared": meta.shared})
    except (AttributeError, IndexError, TypeError) as error:
        rows.append({"error": f"{type(error).__name__}: {error}"})
    with open(path, "w") as file:
        json.dump(rows, file, indent=1)


def pytest_sessionfinish(session, exitstatus):
    report = os.environ.get("FUSEDRES_KERNEL_REPORT")
    if report and bench_device().type == "cuda":
        _write_kernel_report(report)
    config = session.config
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or bs.disabled or bs.skip:
        return
    option = config.getoption("--min-speedup")
    threshold, source = gate.resolve_threshold(option, bench_device().type if option == "auto"
                                               else None)
    ratios = gate.compute_ratios(gate.results_from_benchmarks(bs.benchmarks))
    gated = gate.gated_for(bench_device().type)
    verdict = gate.judge(ratios, threshold, gated)
    config._fusedres_gate = (verdict, threshold, source, gated)
    if not verdict.passed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None:
        return
    terminalreporter.section("fusedres speedup gate")
    if bs.disabled:
        terminalreporter.write_line("speedup gate: benchmarks are disabled (--benchmark-disable); "
                                    "nothing was timed, so no ratio was checked")
        return
    if bs.skip:
        terminalreporter.write_line("speedup gate: benchmarks were skipped (--benchmark-skip); "
                                    "no ratio was checked")
        return
    if config._fusedres_gate is None:
        terminalreporter.write_line("speedup gate: the session ended before the gate ran")
        return
    verdict, threshold, source, gated = config._fusedres_gate
    if not verdict.ratios:
        terminalreporter.write_line("speedup gate: no fused benchmark ran; nothing to check")
        return
    terminalreporter.write_line(f"threshold {threshold:g}x ({source})")
    for line in gate.format_table(verdict, threshold, gated).splitlines():
        terminalreporter.write_line(line, red=line.endswith("FAIL") or "FAILED" in line)
