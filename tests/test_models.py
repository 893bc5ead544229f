"""The fused ResNet family against torchvision's eager models (what ``fuse`` refuses:
tests/test_fusing.py)."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import fusedres

from .conftest import DEVICE, TF32
from .numerics import (MODEL_HALF_TOL, assert_close_to_reference, model_tol, randomize_bn,
                       rel_tol)

ALL_MODELS = list(fusedres.MODELS)
SIZE = (33, 47)  # odd on purpose


def _eager(name, **kwargs):
    return randomize_bn(getattr(torchvision.models, name)(**kwargs)).eval()


def _float64_reference(eager, x):
    with torch.no_grad():
        return copy.deepcopy(eager).double().cpu()(x.double().cpu())


def _assert_fused_matches_eager(eager, input_shape):
    fused = fusedres.fuse(eager).to(DEVICE)
    x = torch.randn(*input_shape, device=DEVICE)
    with torch.no_grad():
        out = fused(x)
    assert_close_to_reference(out, _float64_reference(eager, x), model_tol(TF32))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_constructor_matches_torchvision_torch_path(name, monkeypatch):
    """Every constructor, loaded with torchvision's weights, on the CPU torch path."""
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    eager = _eager(name)
    fused = fusedres.MODELS[name]()
    fused.load_state_dict(eager.state_dict(), strict=True)
    fused.eval()
    x = torch.randn(1, 3, *SIZE)
    with torch.inference_mode():
        out = fused(x)
    assert_close_to_reference(out, _float64_reference(eager, x), model_tol(), name)


@pytest.mark.parametrize("name,dtype", [
    ("resnet18", torch.float32), ("resnet50", torch.float32),
    ("resnext50_32x4d", torch.float32), ("resnet18", torch.float16),
    ("resnet50", torch.bfloat16),
], ids=str)
def test_fused_model_runs_triton_kernels(name, dtype, count_launches):
    """Through the Triton kernels (interpreted on CPU): every conv is a launch, the
    downsample shortcut rides inside its block's last launch, and the result is eager's."""
    if DEVICE.type == "cpu" and not fusedres.kernels.INTERPRETED:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    eager = _eager(name)
    fused = fusedres.fuse(eager).to(DEVICE, dtype)
    x = torch.randn(2, 3, 31, 29, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        out = fused(x)
    blocks = [b for layer in (fused.layer1, fused.layer2, fused.layer3, fused.layer4) for b in layer]
    convs_per_block = len(blocks[0]._PAIRS)
    assert len(count_launches) == 1 + convs_per_block * len(blocks)
    downsampling_blocks = 3 if name == "resnet18" else 4  # Bottleneck nets: layer1 too
    assert sum(c["shortcut"] is not None for c in count_launches) == downsampling_blocks
    eager_ref = copy.deepcopy(eager).to(dtype).double()  # eager with the rounded weights
    tol, element_tol = ((model_tol(TF32), None) if dtype == torch.float32
                        else MODEL_HALF_TOL[dtype])
    assert_close_to_reference(out, eager_ref(x.double().cpu()), tol, f"{name} {dtype}",
                              element_tol)


def test_fuse_keeps_state_dict_and_names():
    eager = _eager("resnet50")
    fused = fusedres.fuse(eager)
    assert isinstance(fused, fusedres.FusedResNet)
    assert isinstance(fused.layer1[0], fusedres.FusedBottleneck)
    assert list(fused.state_dict()) == list(eager.state_dict())
    for key, value in eager.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value), key
    assert [n for n, _ in fused.named_modules()] == [n for n, _ in eager.named_modules()]
    # fuse() copied: the eager model is untouched and independent.
    with torch.no_grad():
        fused.conv1.weight.zero_()
    assert eager.conv1.weight.abs().sum() > 0


def test_fuse_inplace_shares_parameters():
    eager = _eager("resnet18")
    fused = fusedres.fuse(eager, inplace=True)
    assert fused.conv1.weight is eager.conv1.weight


def test_state_dict_round_trips(tmp_path):
    eager = _eager("resnext50_32x4d")
    fused = fusedres.resnext50_32x4d()
    fused.load_state_dict(eager.state_dict(), strict=True)
    back = torchvision.models.resnext50_32x4d()
    back.load_state_dict(fused.state_dict(), strict=True)
    path = tmp_path / "weights.pt"
    torch.save(eager.state_dict(), path)
    from_file = fusedres.resnext50_32x4d(weights=path)
    for key, value in eager.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
        assert torch.equal(from_file.state_dict()[key], value), key


@pytest.mark.parametrize("kwargs", [
    {"num_classes": 10},
    {"zero_init_residual": True},
    {"replace_stride_with_dilation": [False, True, True]},
], ids=["num_classes", "zero_init_residual", "dilation"])
def test_fuse_variants(kwargs, backend):
    _assert_fused_matches_eager(_eager("resnet50", **kwargs), (1, 3, 35, 37))


def test_train_mode_matches_eager_including_gradients_and_stats():
    eager = randomize_bn(torchvision.models.resnet18(num_classes=7)).train()
    fused = fusedres.fuse(eager).train()
    x = torch.randn(4, 3, 32, 32)
    out_e, out_f = eager(x), fused(x)
    torch.testing.assert_close(out_f, out_e, rtol=0, atol=0)
    out_e.square().sum().backward()
    out_f.square().sum().backward()
    for (name, p_e), (_, p_f) in zip(eager.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(p_f.grad, p_e.grad, msg=name)
    for (name, b_e), (_, b_f) in zip(eager.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b_f, b_e, msg=name)


def test_nchw_and_channels_last_inputs_agree(backend):
    fused = fusedres.fuse(_eager("resnet18")).to(DEVICE)
    x = torch.randn(2, 3, 32, 30, device=DEVICE)
    with torch.no_grad():
        a = fused(x)
        b = fused(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b)


def test_batch_of_one_and_odd_sizes(backend):
    _assert_fused_matches_eager(_eager("resnet18"), (1, 3, 41, 23))


class TestNeverStale:
    def _check(self, fused, name, x):
        """``fused`` against a torchvision model holding its current state."""
        eager = getattr(torchvision.models, name)().eval()
        eager.load_state_dict(fused.state_dict())
        with torch.no_grad():
            out = fused(x)
        assert_close_to_reference(out, _float64_reference(eager, x), model_tol(TF32))

    def test_in_place_edit_and_load_state_dict(self, backend):
        fused = fusedres.fuse(_eager("resnet18")).to(DEVICE)
        x = torch.randn(1, 3, 32, 32, device=DEVICE)
        self._check(fused, "resnet18", x)
        with torch.no_grad():
            fused.layer2[0].downsample[1].running_var.mul_(3.0)  # the fused shortcut's BN
            fused.layer3[1].conv2.weight.neg_()
        self._check(fused, "resnet18", x)
        fused.load_state_dict(_eager("resnet18").state_dict())
        self._check(fused, "resnet18", x)

    def test_replaced_block_submodule(self, backend):
        fused = fusedres.fuse(_eager("resnet50")).to(DEVICE)
        x = torch.randn(1, 3, 32, 32, device=DEVICE)
        self._check(fused, "resnet50", x)
        fused.layer1[0].downsample = copy.deepcopy(_eager("resnet50").layer1[0].downsample).to(DEVICE)
        fused.layer2[1].bn2 = randomize_bn(nn.BatchNorm2d(128)).to(DEVICE).eval()
        self._check(fused, "resnet50", x)


def test_bad_weights_argument():
    with pytest.raises(TypeError, match="weights must be"):
        fusedres.resnet18(weights=42)
    with pytest.raises(FileNotFoundError):
        fusedres.resnet18(weights="/nonexistent/weights.pt")


class TestInputDtypeDiffersFromModel:
    """Issue 9, item 10: the dtype mismatch is named at the first fused step, not at ``fc``."""

    @pytest.mark.parametrize("model_dtype,input_dtype", [(torch.float32, torch.float16),
                                                         (torch.bfloat16, torch.float32)],
                             ids=str)
    def test_mismatch_names_both_dtypes(self, torch_path, model_dtype, input_dtype):
        fused = fusedres.fuse(randomize_bn(torchvision.models.resnet18())).eval().to(model_dtype)
        x = torch.randn(1, 3, 32, 32, dtype=input_dtype)
        with torch.no_grad(), pytest.raises(TypeError, match=rf"input has dtype {input_dtype} "
                                            rf"but the model's parameters have dtype {model_dtype}"):
            fused(x)

    def test_autocast_changes_the_dtype_on_purpose(self, torch_path):
        eager = randomize_bn(torchvision.models.resnet18()).eval()
        fused = fusedres.fuse(eager)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = fused(x)
            ref = eager(x)
        assert out.dtype == ref.dtype == torch.bfloat16
        assert_close_to_reference(out, ref.double(), 4 * rel_tol(torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("through", ["module", "cuda_graph"])
def test_autocast_runs_kernels_in_that_dtype(dtype, through, count_launches):
    eager = _eager("resnet50").cuda()
    fused = fusedres.fuse(eager)
    run = fused if through == "module" else fusedres.CUDAGraphRunner(fused)
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        out = run(x)
        ref = eager(x)
    assert out.dtype == ref.dtype
    assert count_launches and all(c["x"].dtype == dtype for c in count_launches)
    assert all(c["residual"] is None or c["residual"].dtype == dtype for c in count_launches)
    # The reference is eager's own half-precision result: both sides round, so twice the
    # bounds against float64.
    tol, element_tol = (2 * bound for bound in MODEL_HALF_TOL[dtype])
    assert_close_to_reference(out, ref.double(), tol, f"autocast {dtype}", element_tol)
