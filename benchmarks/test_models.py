"""Whole-model benchmarks: eager (channels_last), eager NCHW, fused and, where enabled,
torch.compile, timed interleaved per configuration (see conftest.measure_pair).

``--bench-model NAME`` (repeatable; torchvision names or ``timm:<name>``) replaces the default
models: each runs at every GPU configuration below, or at batch 1, 224x224, fp32 on CPU."""
import itertools

import torch

from benchmarks import costs
from fusedres import model_names
from fusedres.bench import DTYPES, model_contenders
from fusedres.trace import trace_launches

# ResNet-50 first: the headline, and the one a time limit must not cut off.
MODELS = ("resnet50", "resnet18", "resnet34")

# (model, dtype, batch, size).  GPU: the full grid.  CPU: a small set that keeps the whole
# CPU benchmark run under 3 minutes on 2 cores.
def gpu_cases(models):
    return list(itertools.product(models, ("float16", "bfloat16", "float32"), (1, 32, 256),
                                  (224,)))


CPU_CASES = [("resnet18", "float32", 1, 224), ("resnet18", "float32", 8, 112),
             ("resnet34", "float32", 1, 224), ("resnet50", "float32", 1, 224)]


def cases(chosen):
    """The (model, dtype, batch, size) grid: the default one, or that of ``--bench-model``."""
    if torch.cuda.is_available():
        return gpu_cases(chosen or MODELS)
    return [(model, "float32", 1, 224) for model in chosen] if chosen else CPU_CASES


def pytest_generate_tests(metafunc):
    if metafunc.function is test_model:
        chosen = metafunc.config.getoption("--bench-model")
        for name in chosen or ():
            model_names.check_name(name)
        grid = cases(chosen)
        metafunc.parametrize("model,dtype,batch,size", grid,
                             ids=[f"{m}-{d}-b{b}-{s}" for m, d, b, s in grid])
# Seconds of interleaved timing per configuration.  A CPU model round is 0.1-0.4 s, and 7
# rounds left the ratios swinging by 0.25 between runs; 6 s buys 15-60 rounds.
BUDGET_S = {"cpu": 6.0, "cuda": 1.0}


def model_costs(model, batch, size, dtype):
    """(FLOPs, fused-floor bytes) of one forward: every fused launch plus the classifier."""
    with torch.device("meta"):
        fused = model_names.create_fused(model)
    geometries = trace_launches(fused, batch, (size, size), dtype)
    fc = 2 * batch * fused.fc.in_features * fused.fc.out_features
    return (sum(map(costs.launch_flops, geometries)) + fc, sum(map(costs.launch_bytes, geometries)))


def test_model(measure_pair, device, use_compile, model, dtype, batch, size):
    contenders = model_contenders(model, batch, size, DTYPES[dtype], device, use_compile)
    flops, nbytes = model_costs(model, batch, size, DTYPES[dtype])
    measure_pair(contenders, lambda median: costs.throughput(batch, median, flops, nbytes,
                                                             "images"),
                 BUDGET_S[device.type])
