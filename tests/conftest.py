"""Test set-up shared by the whole suite.

Without a CUDA device the Triton kernels run through the interpreter on CPU tensors; that
has to be decided before anything imports triton, which is why it happens here, at the top.
"""
import os
import random

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fusedres  # noqa: E402  (after TRITON_INTERPRET is settled)


def _interpreter_breaks():
    """Triton 3.6's CPU interpreter fails with NumPy 2.4 and newer ("only 0-dimensional arrays
    can be converted to Python scalars", interpreter.py): say so once, not in every test."""
    import numpy
    import triton
    version = lambda text: tuple(int(p) for p in text.split(".")[:2])  # noqa: E731
    if fusedres.kernels.INTERPRETED and version(triton.__version__) < (3, 7) \
            and version(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter does not work with NumPy "
                f"{numpy.__version__}: install numpy<2.4, or Triton 3.7+ (see README)")
    return None


if _interpreter_breaks():
    pytest.exit(_interpreter_breaks(), returncode=pytest.ExitCode.USAGE_ERROR)

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
# fp32 convolutions run as TF32 on the GPU (as eager cuDNN does) unless it is switched off.
TF32 = HAS_CUDA and fusedres.kernels.cudnn_allows_tf32()


def pytest_report_header(config):
    return (f"fusedres tests on {DEVICE}"
            f"{' (Triton interpreter)' if fusedres.kernels.INTERPRETED else ''}; "
            f"torch {torch.__version__}")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device. Kernel numerics run under the Triton "
                                   "interpreter in the CPU tests; not covered without a GPU: "
                                   "CUDA graphs, reduce-overhead compile, TF32 rounding, "
                                   "launches past 2**31 elements at full size, real tuning")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seed(request):
    """Fresh random data every run; the seed is printed (shown on failure) to replay it with
    FUSEDRES_SEED=<seed>."""
    value = int(os.environ.get("FUSEDRES_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    print(f"FUSEDRES_SEED={value}  ({request.node.nodeid})")
    return value


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def torch_path(monkeypatch):
    """The CPU torch path instead of the interpreted kernels, for tests of what does not
    depend on the backend (fold caches, bookkeeping, error messages): it keeps them fast."""
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)


@pytest.fixture(params=["triton", "torch"])
def backend(request, monkeypatch):
    """Forces the backend: 'torch' is the CPU path without the interpreter.  Afterwards it
    checks that the Triton kernel really ran on the 'triton' backend (a silent fall-back to
    the torch path fails the test) and never on 'torch'; a test that must stop before any
    launch (bad input) is marked ``no_launch``."""
    if request.param == "torch":
        if DEVICE.type != "cpu":
            pytest.skip("the torch path serves CPU tensors only")
        monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    elif DEVICE.type == "cpu" and not fusedres.kernels.INTERPRETED:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    launches = []
    original = fusedres.kernels.conv_bn_act

    def counting(*args, **kwargs):
        launches.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fusedres.kernels, "conv_bn_act", counting)
    yield request.param
    if request.param == "torch" or request.node.get_closest_marker("no_launch"):
        assert not launches, f"{len(launches)} Triton launches on the {request.param} backend"
    else:
        assert launches, "no Triton launch on the triton backend: the torch path ran instead"


@pytest.fixture
def count_launches(monkeypatch):
    """Counts Triton kernel launches, so a test can prove the fused path really ran."""
    calls = []
    original = fusedres.kernels.conv_bn_act

    def counting(x, *args, **kwargs):
        calls.append({"x": x, **kwargs})
        return original(x, *args, **kwargs)

    monkeypatch.setattr(fusedres.kernels, "conv_bn_act", counting)
    return calls
