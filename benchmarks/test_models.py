"""Whole-model benchmarks: eager (channels_last), eager NCHW, fused and, where enabled,
torch.compile, timed interleaved per configuration (see conftest.measure_pair)."""
import itertools

import pytest
import torch

import fusedres
from benchmarks import costs
from fusedres.bench import DTYPES, model_contenders
from fusedres.trace import trace_launches

# ResNet-50 first: the headline, and the one a time limit must not cut off.
MODELS = ("resnet50", "resnet18", "resnet34")

# (model, dtype, batch, size).  GPU: the full grid.  CPU: a small set that keeps the whole
# CPU benchmark run under 3 minutes on 2 cores.
GPU_CASES = list(itertools.product(MODELS, ("float16", "bfloat16", "float32"), (1, 32, 256),
                                   (224,)))
CPU_CASES = [("resnet18", "float32", 1, 224), ("resnet18", "float32", 8, 112),
             ("resnet34", "float32", 1, 224), ("resnet50", "float32", 1, 224)]
CASES = GPU_CASES if torch.cuda.is_available() else CPU_CASES
# Seconds of interleaved timing per configuration.  A CPU model round is 0.1-0.4 s, and 7
# rounds left the ratios swinging by 0.25 between runs; 6 s buys 15-60 rounds.
BUDGET_S = {"cpu": 6.0, "cuda": 1.0}


def model_costs(model, batch, size, dtype):
    """(FLOPs, fused-floor bytes) of one forward: every fused launch plus the classifier."""
    specs = trace_launches(getattr(fusedres, model)(), batch, (size, size), dtype)
    fc = 2 * batch * (512 if model in ("resnet18", "resnet34") else 2048) * 1000
    return (sum(map(costs.launch_flops, specs)) + fc, sum(map(costs.launch_bytes, specs)))


@pytest.mark.parametrize("model,dtype,batch,size", CASES,
                         ids=[f"{m}-{d}-b{b}-{s}" for m, d, b, s in CASES])
def test_model(measure_pair, device, use_compile, model, dtype, batch, size):
    contenders = model_contenders(model, batch, size, DTYPES[dtype], device, use_compile)
    flops, nbytes = model_costs(model, batch, size, DTYPES[dtype])
    measure_pair(contenders, lambda median: costs.throughput(batch, median, flops, nbytes,
                                                             "images"),
                 BUDGET_S[device.type])
