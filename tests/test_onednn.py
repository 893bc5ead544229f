"""The CPU oneDNN path (fusedres/onednn.py): prepacked folded weights, bias and residual as
the convolution's post-ops, the ReLU in place; and the plain torch-ops path it falls back to.
Runs without the interpreter's kernel path: ``fusedres.ops`` takes these paths for CPU
tensors when the Triton backend is off (the ``backend`` fixture's "torch")."""
import copy

import pytest
import torch
import torchvision

import fusedres
from fusedres import onednn, ops

from .numerics import randomize_bn

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU paths")


@pytest.fixture
def cpu_paths(monkeypatch):
    """Off the interpreter; counts oneDNN convolutions."""
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    calls = []
    original = onednn.conv_add

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(onednn, "conv_add", counting)
    return calls


def _models(name, dtype):
    eager = randomize_bn(getattr(torchvision.models, name)()).eval()
    return eager.to(dtype), fusedres.fuse(copy.deepcopy(eager)).eval().to(dtype)


def _assert_close(out, ref, tol):
    assert out.isfinite().all()
    rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert rel < tol, rel


@pytest.mark.skipif(not onednn.AVAILABLE, reason="oneDNN ops missing on this torch/CPU")
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_models_run_on_onednn_and_match_eager(name, cpu_paths):
    eager, fused = _models(name, torch.float32)
    x = torch.randn(2, 3, 64, 48)
    with torch.inference_mode():
        out, ref = fused(x), eager.double()(x.double())
    # One oneDNN convolution per fused step, plus one per downsample shortcut.
    steps = sum(1 for m in fused.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert len(cpu_paths) == steps
    _assert_close(out, ref, 1e-4)


def test_without_onednn_the_torch_ops_path_runs(cpu_paths, monkeypatch):
    # Another torch build or CPU: the capability check says no, and nothing changes but speed.
    monkeypatch.setattr(onednn, "AVAILABLE", False)
    assert not onednn.supports(torch.float32)
    eager, fused = _models("resnet18", torch.float32)
    x = torch.randn(1, 3, 40, 40)
    with torch.inference_mode():
        out, ref = fused(x), eager.double()(x.double())
    assert cpu_paths == []
    _assert_close(out, ref, 1e-4)


@pytest.mark.skipif(not onednn.supports(torch.bfloat16),
                    reason="this CPU has no native bf16 for oneDNN; bf16 takes the torch path")
def test_bf16_on_onednn(cpu_paths):
    eager, fused = _models("resnet18", torch.float32)
    fused = fused.to(torch.bfloat16)
    x = torch.randn(2, 3, 48, 48)
    with torch.inference_mode():
        out, ref = fused(x.to(torch.bfloat16)), eager.double()(x.double())
    assert cpu_paths
    _assert_close(out, ref, 3e-2)


@pytest.mark.skipif(not onednn.AVAILABLE, reason="oneDNN ops missing on this torch/CPU")
def test_nan_survives_where_onednn_relu_would_drop_it(cpu_paths):
    # oneDNN's ReLU post-op maps NaN to 0; the path adds the residual in the convolution and
    # runs the ReLU in place so the output keeps eager's NaN.
    conv, bn = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
    randomize_bn(bn)
    fused = fusedres.FusedConvBN(conv, bn).eval()
    x, residual = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    x[0, 2, 3, 3] = float("nan")
    residual[0, 5, 0, 0] = float("nan")
    with torch.no_grad():
        out, ref = fused(x, residual), torch.relu(bn.eval()(conv(x)) + residual)
    assert cpu_paths and ref.isnan().any()
    assert torch.equal(out.isnan(), ref.isnan())


@pytest.mark.skipif(not onednn.AVAILABLE, reason="oneDNN ops missing on this torch/CPU")
def test_prepacked_weights_follow_edits_and_serve_other_shapes(cpu_paths):
    eager, fused = _models("resnet18", torch.float32)
    with torch.inference_mode():
        fused(torch.randn(1, 3, 32, 32))
        x = torch.randn(3, 3, 56, 40)  # another shape: the same prepacked weights serve it
        _assert_close(fused(x), eager.double()(x.double()), 1e-4)
    with torch.no_grad():
        for model in (eager, fused):
            model.layer2[0].conv1.weight.mul_(-1.5)
    with torch.inference_mode():
        _assert_close(fused(x), eager.double()(x.double()), 1e-4)


def test_the_probe_agrees_with_the_ops():
    # AVAILABLE is what the import-time check found; supports() follows it per dtype.
    assert onednn.supports(torch.float32) == onednn.AVAILABLE
    assert not onednn.supports(torch.float16)
    assert ops.uses_triton(torch.empty(1)) == fusedres.kernels.INTERPRETED
