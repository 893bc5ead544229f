"""Host time per fused launch at batch 1: launch plans against the normal launch path.

    pytest benchmarks/test_host_overhead.py --benchmark-only

One forward of a fused ResNet-18/50 (fp16, batch 1, channels_last input), its max-pool,
average-pool and classifier replaced by allocations of their outputs
(``standin.launches_only``), so the time is that of the fused launches.  ``path="plan"``
replays launch plans (fusedres/plans.py); ``path="jit"`` is the normal path (launcher
checks, config choice, Triton's JIT) with plans off.  ``choice`` forces the configs:
``plain`` (no split-K, TMA or channel padding) or ``split-k-tma`` (split-K or TMA wherever a
geometry has one), as the stand-in's tuner does (``standin.pick``).

Without a GPU it runs on the stand-in GPU (fusedres/standin.py: the real CUDA-path code on
CPU tensors down to Triton's launcher, which launches nothing); on a GPU for real, each
timed forward starting with an empty queue, so its time is host time.  Each entry's
``extra_info``: model, batch, path, choice, launches (per forward), us_per_launch (median
forward time / launches).  Plain entries, outside the eager-vs-fused speedup gate.
"""
import contextlib
from unittest import mock

import pytest
import torch

import fusedres
from fusedres import kernels, ops, standin
from fusedres.kernels.conv import launcher

ROUNDS = 300


@contextlib.contextmanager
def _gpu(device, choice):
    """The stand-in GPU on a CPU; on a GPU, only its config choice."""
    if device.type == "cpu":
        with standin.standin_gpu(choice) as gpu:
            yield gpu
    else:
        with mock.patch.object(launcher.TUNER, "pick", standin.pick(choice)):
            yield None


@pytest.mark.parametrize("path", ["plan", "jit"])
@pytest.mark.parametrize("choice", ["plain", "split-k-tma"])
@pytest.mark.parametrize("model_name", ["resnet18", "resnet50"])
def test_host_time_per_launch(benchmark, device, model_name, choice, path, monkeypatch):
    monkeypatch.setattr(ops, "LAUNCH_PLANS", path == "plan")
    model = getattr(fusedres, model_name)().eval().half().to(device)
    x = torch.randn(1, 3, 224, 224, device=device).half().contiguous(
        memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with _gpu(device, choice), torch.inference_mode():
        standin.launches_only(model, x)
        with kernels.record_launches() as launches:
            model(x)  # tunes or compiles, and builds the plans
        for _ in range(5):
            model(x)
        benchmark.pedantic(model, args=(x,), setup=sync, rounds=ROUNDS, warmup_rounds=10)
    median_us = benchmark.stats.stats.median * 1e6
    benchmark.extra_info.update(model=model_name, batch=1, path=path, choice=choice,
                                launches=len(launches),
                                us_per_launch=round(median_us / len(launches), 2))
