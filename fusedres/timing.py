"""Wall-clock timing of competing implementations, measured interleaved; and, apart, a
call's GPU time (``gpu_time``) and host time (``host_time``).

Used by ``fusedres bench`` and the pytest-benchmark suites in ``benchmarks/``.  Each timed
call is bracketed by device synchronisation, so on a GPU the time is the call's wall time:
its host work (Python, launches) plus the GPU time of what it queued, not the GPU time
alone (where the host takes longer than the kernels, the host's time is what shows).  The
contenders are timed round by round in alternating order (A B C, C B A, A B C, ...): a burst
of load from another process then hits every contender in the same round, so ratios of
medians stay stable on a noisy shared machine even when the absolute times do not.
"""
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional

import torch


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, including the device work it queues."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def warm_up(contenders: Mapping[str, Callable[[], object]], device: torch.device,
            calls: int, first: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Call each contender ``calls`` times (compilation, autotuning and cuDNN's algorithm
    search happen here, outside any timing); return each one's fastest call in seconds, the
    estimate of a steady-state call that a single slow call under load cannot inflate.
    ``first``, when given, receives each one's first call in seconds (its compile time)."""
    fastest = {}
    for name, fn in contenders.items():
        seconds = [time_call(fn, device) for _ in range(calls)]
        fastest[name] = min(seconds)
        if first is not None:
            first[name] = seconds[0]
    return fastest


def rounds_for_budget(seconds_per_round: float, budget_s: float, min_rounds: int,
                      max_rounds: int) -> int:
    """How many interleaved rounds fit in ``budget_s``, clamped to [min_rounds, max_rounds]."""
    fitting = int(budget_s / max(seconds_per_round, 1e-9))
    return max(min_rounds, min(max_rounds, fitting))


def interleaved(contenders: Mapping[str, Callable[[], object]], device: torch.device,
                rounds: int,
                progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, List[float]]:
    """Time every contender once per round, alternating the order each round.

    Returns ``{name: [seconds per call, one per round]}``.  ``progress(done, rounds)`` is
    called after each round.  Warm up first (``warm_up``).
    """
    names = list(contenders)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else reversed(names)):
            times[name].append(time_call(contenders[name], device))
        if progress is not None:
            progress(r + 1, rounds)
    return times


def median(values) -> float:
    return statistics.median(values)


def gpu_time(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Median seconds of GPU time per call of ``fn``, with no host work in it: the call is
    captured in a CUDA graph (repeated) and the graph replayed between events
    (``triton.testing.do_bench_cudagraph``).  None off CUDA, or where ``fn`` cannot be
    captured."""
    if device.type != "cuda":
        return None
    import triton
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median") / 1e3
    except RuntimeError:  # a call the CUDA graph capture refuses
        return None


def host_time(fn: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Median seconds the host spends in one call of ``fn`` that starts with an empty queue:
    its Python and launch work, not waiting for the GPU (on CPU: the call's time)."""
    seconds = []
    for _ in range(calls):
        synchronize(device)
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    synchronize(device)
    return median(seconds)
