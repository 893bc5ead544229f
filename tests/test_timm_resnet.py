"""timm's ResNet family: fused models against timm's eager models, the pooled shortcut as
traced, compiled and run through the custom operator, timm's API, and what is refused.  (The
pooled shortcut's and the scale-add kernel's numerics: tests/kernels/.)"""
import copy
import os
import re
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.eca import EcaModule
from timm.layers.squeeze_excite import SEModule
from torch import nn

import fusedres
from fusedres import folding, timm_resnet, trace
from fusedres.kernels import ConvConfig, pack_weight

from .conftest import DEVICE, TF32
from .numerics import (MODEL_HALF_TOL, assert_close_to_reference, model_tol, randomize_bn,
                       rel_tol)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Odd on purpose: after the stride-2 stem and the max-pool every stage input is odd
# (17x19 -> 9x10 -> 5x5 -> 3x3 -> 2x2), so the pooled downsamples of layer2 and layer3 see
# border windows of 1 and 2 pixels.
SIZE = (17, 19)


def _eager(name, **kwargs):
    return randomize_bn(timm.create_model(name, pretrained=False, **kwargs)).eval()


def _float64_reference(eager, x):
    with torch.no_grad():
        return copy.deepcopy(eager).double().cpu()(x.double().cpu())


def _relative_error(out, ref):
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------- whole models

@pytest.mark.parametrize("name", timm_resnet.CHECKED_ARCHITECTURES)
def test_architecture_matches_timm_torch_path(name, monkeypatch):
    """Every checked architecture on the CPU torch path, against timm's eager in float64."""
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    eager = _eager(name)
    x = torch.randn(1, 3, *SIZE)
    # The reference first, then fuse in place: no copies of the larger models (float32 ->
    # float64 -> float32 is exact).
    with torch.no_grad():
        ref = eager.double()(x.double())
    fused = fusedres.fuse(eager.float(), inplace=True)
    assert isinstance(fused, timm_resnet.FusedTimmResNet)
    with torch.inference_mode():
        out = fused(x)
    assert_close_to_reference(out, ref, model_tol(), name)
    print(f"{name}: torch path, max relative error {_relative_error(out, ref):.2e}")


# (name, batch, dtype, conv launches, launches with the shortcut fused, of them pooled,
#  scale_add_act passes).  Counted by hand from timm's structure: deep stem 3 launches;
# BasicBlock 2, Bottleneck 3 per block; an SE block's downsample is a launch of its own.
INTERPRETED_CASES = [
    ("resnet18d", 2, torch.float32, 3 + 8 * 2, 3, 3, 0),
    ("resnet50d", 1, torch.float16, 3 + 16 * 3, 4, 3, 0),  # layer1: stride 1, no pool
    ("seresnext26d_32x4d", 1, torch.float32, 3 + 8 * 3 + 4, 0, 0, 8),
]


@pytest.mark.parametrize("name,batch,dtype,launches,shortcuts,pooled,scale_adds",
                         INTERPRETED_CASES, ids=[c[0] for c in INTERPRETED_CASES])
def test_architecture_runs_triton_kernels(name, batch, dtype, launches, shortcuts, pooled,
                                          scale_adds, count_launches, monkeypatch):
    """Through the Triton kernels (interpreted on CPU), launch by launch as documented."""
    if DEVICE.type == "cpu" and not fusedres.kernels.INTERPRETED:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    passes = []
    original = fusedres.kernels.scale_add_act
    monkeypatch.setattr(fusedres.kernels, "scale_add_act",
                        lambda *a, **k: passes.append(1) or original(*a, **k))
    eager = _eager(name)
    fused = fusedres.fuse(eager).to(DEVICE, dtype)
    x = torch.randn(batch, 3, *SIZE, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        out = fused(x)
    assert len(count_launches) == launches
    assert sum(c["shortcut"] is not None for c in count_launches) == shortcuts
    assert sum(c["shortcut_pool"] for c in count_launches) == pooled
    assert len(passes) == scale_adds
    ref = copy.deepcopy(eager).to(dtype).double()(x.double().cpu())  # the rounded weights
    tol, element_tol = ((model_tol(TF32), None) if dtype == torch.float32
                        else MODEL_HALF_TOL[dtype])
    assert_close_to_reference(out, ref, tol, f"{name} {dtype}", element_tol)
    print(f"{name} {dtype}: Triton {'interpreter' if fusedres.kernels.INTERPRETED else 'GPU'}, "
          f"max relative error {_relative_error(out, ref):.2e}")


def test_train_mode_matches_eager_exactly():
    eager = _eager("ecaresnet26t", num_classes=7).train()
    fused = fusedres.fuse(eager).train()
    x = torch.randn(2, 3, *SIZE)
    out_e, out_f = eager(x), fused(x)
    torch.testing.assert_close(out_f, out_e, rtol=0, atol=0)
    out_e.square().sum().backward()
    out_f.square().sum().backward()
    for (name, p_e), (_, p_f) in zip(eager.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(p_f.grad, p_e.grad, rtol=0, atol=0, msg=name)
    for (name, b_e), (_, b_f) in zip(eager.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b_f, b_e, rtol=0, atol=0, msg=name)


def test_state_dict_names_and_round_trip():
    eager = _eager("seresnext26d_32x4d")
    fused = fusedres.fuse(eager)
    assert [n for n, _ in fused.named_modules()] == [n for n, _ in eager.named_modules()]
    assert list(fused.state_dict()) == list(eager.state_dict())
    for key, value in eager.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value), key
    back = timm.create_model("seresnext26d_32x4d", pretrained=False)
    back.load_state_dict(fused.state_dict(), strict=True)
    fused.load_state_dict(_eager("seresnext26d_32x4d").state_dict(), strict=True)
    # fuse() copied: the eager model is untouched and independent.
    with torch.no_grad():
        fused.conv1[0].weight.zero_()
    assert eager.conv1[0].weight.abs().sum() > 0


def test_loads_into_fused_timm_modules_are_atomic_for_folds():
    # A load into the model or a block is seen by folds in other threads and by
    # CUDAGraphRunner(check="cheap") (tests/test_concurrency.py covers the mechanism).
    fused = fusedres.fuse(_eager("resnet18d"))
    for module in (fused, fused.layer2[0]):
        before = folding.loads_generation()
        module.load_state_dict(module.state_dict())
        assert folding.loads_generation() == before + 2, type(module).__name__


def test_timm_model_api(monkeypatch):
    """On the torch path: the API is the same on every backend."""
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    eager = _eager("resnet18d", num_classes=11)
    fused = fusedres.fuse(eager).to(DEVICE)
    for attr in ("num_features", "feature_info", "pretrained_cfg", "default_cfg", "num_classes"):
        assert getattr(fused, attr) == getattr(eager, attr), attr
    assert fused.get_classifier() is fused.fc and fused.get_classifier(name_only=True) == "fc"
    x = torch.randn(1, 3, *SIZE, device=DEVICE)
    tol = model_tol(TF32)
    with torch.no_grad():
        features = fused.forward_features(x)
        ref_features = copy.deepcopy(eager).double().cpu().forward_features(x.double().cpu())
        assert_close_to_reference(features, ref_features, tol, "forward_features")
        pre = fused.forward_head(features, pre_logits=True)
        assert pre.shape == (1, fused.num_features)
        fused.reset_classifier(5)
        eager.reset_classifier(5)
        eager.fc.load_state_dict(fused.fc.state_dict())
        assert_close_to_reference(fused(x), _float64_reference(eager, x), tol, "reset head")


def test_edits_after_fusing_are_seen(monkeypatch):
    """The stem's, an SE-block downsample's and an attention module's weights edited in
    place after fusing: the next call folds again (torch path; the rule is the backends')."""
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    eager = _eager("ecaresnet26t")
    fused = fusedres.fuse(eager)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        fused(x)
        for model in (eager, fused):
            model.conv1[3].weight.mul_(-2.0)
            model.layer2[0].downsample[2].running_var.mul_(3.0)
            model.layer3[1].se.conv.weight.neg_()
        out = fused(x)
    assert_close_to_reference(out, _float64_reference(eager, x), model_tol(), "after edits")


def test_fuse_inplace_and_again():
    eager = _eager("resnet10t")
    fused = fusedres.fuse(eager, inplace=True)
    assert fused is eager and type(fused) is timm_resnet.FusedTimmResNet
    assert fusedres.fuse(fused, inplace=True) is fused
    assert type(fusedres.fuse(fused)) is timm_resnet.FusedTimmResNet


# ---------------------------------------------------------------- the pooled shortcut: trace, inspect, custom op

def test_traced_launches_record_the_pooled_shortcut():
    """What inspect / warmup compile: the pooled shortcut is its own specialisation."""
    with torch.device("meta"):
        fused = fusedres.fuse(timm.create_model("resnet50d"), inplace=True)
    specs = trace.trace_launches(fused, batch=2, size=(33, 35), dtype=torch.float16)
    pooled = [spec for spec in specs if spec.shortcut is not None and spec.shortcut.pool]
    assert [spec.shortcut[1:] for spec in pooled] == [(9, 9, 2, True), (5, 5, 2, True),
                                                      (3, 3, 2, True)]
    assert all("+shortcut(avg2x2 " in spec.describe() for spec in pooled)


def test_pooled_shortcut_compiles_within_sm80_shared_memory():
    """The pooled shortcut's four window loads once staged 176 KB of shared memory at the
    widest fp16 tile on sm_80 (163 KB there); compiled for sm_80 without a GPU (one kernel,
    cached next to Triton's cache like ``fusedres inspect``'s)."""
    from fusedres import gpu_inspect
    spec = [s for s in gpu_inspect.specialisations("timm:resnet50d", torch.float16, 256)
            if s.shortcut is not None and s.shortcut.pool][-1]
    config = ConvConfig(128, 128, 64, num_warps=8, num_stages=3)
    assert config in gpu_inspect.candidate_configs(spec)
    result = gpu_inspect.compile_one(spec, config, gpu_inspect.ARCHES["sm_80"], allow_tf32=True)
    assert gpu_inspect.check(result, gpu_inspect.ARCHES["sm_80"]) == []


def test_custom_operator_runs_the_pooled_shortcut():
    """torch.compile / export reach the launcher through the custom operator: its pooled
    shortcut argument and fake implementation agree with the real launch."""
    if not fusedres.kernels.INTERPRETED and DEVICE.type == "cpu":
        pytest.skip("the real operator needs a GPU or TRITON_INTERPRET=1")
    from torch._subclasses.fake_tensor import FakeTensorMode
    x, xs = torch.randn(1, 16, 3, 2, device=DEVICE), torch.randn(1, 8, 5, 3, device=DEVICE)
    w = (torch.randn(32, 16, 1, 1) / 4).to(DEVICE)
    w_s = (torch.randn(32, 8, 1, 1) / 3).to(DEVICE)
    bias = torch.randn(32, device=DEVICE)
    args = (x, pack_weight(w, x.dtype), bias, None, xs, pack_weight(w_s, x.dtype), [1, 1], 1, 0,
            1, 1, 2, True, False, False)
    real = torch.ops.fusedres.conv_bn_act(*args)
    pooled = F.avg_pool2d(xs, 2, 2, ceil_mode=True, count_include_pad=False)
    ref = F.conv2d(x.double(), w.double(), bias.double()) + F.conv2d(pooled.double(), w_s.double())
    assert_close_to_reference(real, ref, rel_tol(x.dtype, TF32), "custom operator")
    with FakeTensorMode() as mode:
        fake = torch.ops.fusedres.conv_bn_act(
            *[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
    assert (fake.shape, fake.stride()) == (real.shape, real.stride())


@pytest.mark.parametrize("module", [
    SEModule(32), SEModule(32, add_maxpool=True), EcaModule(32), EcaModule(32, use_mlp=True),
], ids=["se", "se_maxpool", "eca", "eca_mlp"])
def test_attention_gate_is_the_modules_own(module):
    """The fused block computes the gate with the module's layers and moves the multiply into
    its last pass: gate * x must be exactly what the module returns."""
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        gate = timm_resnet.ATTENTION_GATES[type(module)](module, x)
        assert torch.equal(x * gate, module(x))


# ---------------------------------------------------------------- refused and untouched

def _with(model, path, module):
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)
    return model


@pytest.mark.parametrize("build,match", [
    (lambda: timm.create_model("resnet50_gn"), r"conv1/bn1: expected nn.BatchNorm2d .*GroupNorm"),
    (lambda: timm.create_model("skresnet18"), r"layer1\.0: unsupported block type"),
    (lambda: timm.create_model("resnetblur18"), r"maxpool: expected nn.MaxPool2d"),
    (lambda: timm.create_model("resnetaa50"), r"maxpool: expected nn.MaxPool2d"),
    (lambda: _with(timm.create_model("resnet18"), "layer3.1.aa", nn.AvgPool2d(1)),
     r"layer3\.1\.aa: expected nn.Identity"),
    (lambda: _with(timm.create_model("resnet18"), "layer2.0.drop_block", nn.Dropout()),
     r"layer2\.0\.drop_block: expected nn.Identity or timm's DropBlock2d"),
    (lambda: _with(timm.create_model("resnet18"), "layer4.0.conv2",
                   timm.layers.Conv2dSame(512, 512, 3)),
     r"layer4\.0\.conv2/bn2: expected nn.Conv2d"),
    (lambda: _with(timm.create_model("resnet18"), "layer1.1.act2", nn.SiLU()),
     r"layer1\.1\.act2: expected nn.ReLU"),
    (lambda: timm.create_model("resnet50d", output_stride=16), r"layer4\.0\.downsample\.0"),
    (lambda: timm.create_model("senet154"), r"downsample: downsample convolution must be 1x1"),
], ids=["groupnorm", "skresnet", "blurpool", "aa_avgpool", "aa_block", "drop_block",
        "conv2d_same", "silu", "dilated_avg_down", "3x3_downsample"])
def test_unsupported_part_is_named_and_model_untouched(build, match):
    with torch.device("meta"):
        model = build()
    types = [type(m) for m in model.modules()]
    with pytest.raises(fusedres.UnsupportedModelError, match=match):
        fusedres.fuse(model, inplace=True)
    assert [type(m) for m in model.modules()] == types


def test_dropblock_and_drop_path_are_accepted_in_eval(monkeypatch):
    """Both are timm's own no-ops in eval mode, the only mode that runs fused."""
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    eager = _eager("resnet26t", drop_block_rate=0.2, drop_path_rate=0.1)
    fused = fusedres.fuse(eager).to(DEVICE)
    x = torch.randn(1, 3, *SIZE, device=DEVICE)
    with torch.no_grad():
        out = fused(x)
    assert_close_to_reference(out, _float64_reference(eager, x), model_tol(TF32))


def test_command_line_model_names(monkeypatch):
    """bench / inspect / warmup and the benchmark suite take timm:<name>; without timm the
    error says how to install it."""
    import argparse
    from fusedres import gpu_inspect, model_names
    assert model_names.argument("timm:resnet18d") == "timm:resnet18d"
    with pytest.raises(argparse.ArgumentTypeError, match="timm has no model named 'resnet9x'"):
        model_names.argument("timm:resnet9x")
    specs = gpu_inspect.specialisations("timm:resnet18d", torch.float16, batch=1, size=(64, 64))
    assert sum(spec.shortcut is not None and spec.shortcut.pool for spec in specs) == 3
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(argparse.ArgumentTypeError, match=r"pip install 'fusedres\[timm\]'"):
        model_names.argument("timm:resnet18d")


def test_import_fusedres_does_not_import_timm():
    code = ("import sys, fusedres; fusedres.fuse; fusedres.kernels; "
            "assert 'timm' not in sys.modules, 'timm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": ROOT})


def test_readme_lists_exactly_the_checked_architectures():
    with open(os.path.join(ROOT, "README.md")) as file:
        readme = file.read()
    section = re.search(r"<!-- timm-checked -->(.*?)<!-- /timm-checked -->", readme, re.S)
    assert section, "README.md lost its timm-checked markers"
    listed = re.findall(r"`([a-z0-9_]+)`", section.group(1))
    assert sorted(listed) == sorted(timm_resnet.CHECKED_ARCHITECTURES)
