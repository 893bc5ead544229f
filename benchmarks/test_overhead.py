"""Per-call CPU overhead of ``CUDAGraphRunner``'s staleness check: what every replay pays
before it launches anything, with the default full check and with ``check="cheap"``.  Pure
CPU work, so it runs (and means the same) with or without a GPU; plain pytest-benchmark
entries, outside the eager-vs-fused speedup gate."""
import pytest

import fusedres
from fusedres.watch import ModelWatch


@pytest.mark.parametrize("check", ["full", "cheap"])
@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_graph_runner_staleness_check(benchmark, model, check):
    watch = ModelWatch(getattr(fusedres, model)().eval(), full=check == "full")
    assert benchmark(watch.changed) is False
