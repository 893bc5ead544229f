"""Report series timed outside pytest-benchmark as ordinary pytest-benchmark entries.

The pair tests time eager and fused interleaved in one test (``fusedres.timing``), which the
``benchmark`` fixture cannot do: it times one function per test.  pytest-benchmark 4-5 has no
public call to add an externally timed series, so this module is the one place that touches
its fixture internals (``_make_stats``, ``_mode``): each contender gets a copy of the test's
fixture, renamed, whose stats are filled with the measured times.  The entries then show in
pytest-benchmark's table, its ``--benchmark-json`` and ``--benchmark-save`` like any other.
"""
import copy
from typing import Dict, Iterable


def record(benchmark, contender: str, seconds: Iterable[float], extra_info: Dict) -> None:
    """Add one entry for ``contender`` to the session, with one round per value in
    ``seconds``, named after the test plus ``-<contender>`` and grouped with its twins."""
    entry = copy.copy(benchmark)
    params = dict(benchmark.params or {}, contender=contender)
    param = f"{benchmark.param}-{contender}" if benchmark.param else contender
    base = benchmark.name.split("[", 1)[0]
    entry.name = f"{base}[{param}]"
    entry.fullname = f"{benchmark.fullname.split('[', 1)[0]}[{param}]"
    entry.param, entry.params = param, params
    entry.group = f"{base}[{benchmark.param}]" if benchmark.param else base
    entry.extra_info = dict(extra_info)
    stats = entry._make_stats(1)
    for value in seconds:
        stats.update(value)
    mark_used(benchmark)


def mark_used(benchmark) -> None:
    """The test's own fixture times nothing itself; mark it used so pytest-benchmark does not
    warn "Benchmark fixture was not used at all in this test!"."""
    benchmark._mode = "interleaved pair (benchmarks/recording.py)"
