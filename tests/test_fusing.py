"""``fusedres.fuse`` on torchvision models: what it refuses (``UnsupportedModelError`` naming
the part), and that a refused model is left untouched.  timm's refusals: tests/test_timm_resnet.py."""
import ast
import pathlib
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import fusedres
from fusedres import supported

ROOT = pathlib.Path(__file__).resolve().parent.parent


class TestRejectsUnsupportedModels:
    def test_not_a_resnet(self):
        with pytest.raises(fusedres.UnsupportedModelError, match="expected torchvision's ResNet"):
            fusedres.fuse(nn.Sequential(nn.Conv2d(3, 8, 3)))

    def test_other_torchvision_model(self):
        with pytest.raises(fusedres.UnsupportedModelError, match="got torchvision.models.vgg.VGG"):
            fusedres.fuse(torchvision.models.vgg11())

    def test_block_with_unknown_submodule(self):
        model = torchvision.models.resnet18()
        model.layer2[1].se = nn.Identity()
        with pytest.raises(fusedres.UnsupportedModelError, match=r"layer2\.1: .*unknown \['se'\]"):
            fusedres.fuse(model)

    def test_model_with_unknown_submodule(self):
        model = torchvision.models.resnet18()
        model.dropout = nn.Dropout()
        with pytest.raises(fusedres.UnsupportedModelError, match=r"model: .*unknown \['dropout'\]"):
            fusedres.fuse(model)

    def test_frozen_batchnorm(self):
        from torchvision.ops.misc import FrozenBatchNorm2d
        model = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
        with pytest.raises(fusedres.UnsupportedModelError,
                           match=r"conv1/bn1: expected nn.BatchNorm2d .*got .*FrozenBatchNorm2d"):
            fusedres.fuse(model)

    def test_overridden_forward(self):
        class MyResNet(torchvision.models.ResNet):
            def forward(self, x):
                return super().forward(x) * 2

        model = MyResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
        with pytest.raises(fusedres.UnsupportedModelError, match="overrides forward"):
            fusedres.fuse(model)

    def test_custom_block_type(self):
        model = torchvision.models.resnet18()
        model.layer3[0] = nn.Sequential(nn.Conv2d(128, 256, 3, 2, 1))
        with pytest.raises(fusedres.UnsupportedModelError, match=r"layer3\.0: unsupported block type"):
            fusedres.fuse(model)

    def test_odd_downsample(self):
        model = torchvision.models.resnet18()
        model.layer2[0].downsample[0] = nn.Conv2d(64, 128, 3, 2, 1, bias=False)
        with pytest.raises(fusedres.UnsupportedModelError, match=r"layer2\.0\.downsample: .*1x1"):
            fusedres.fuse(model)


class TestFuseLeavesModelUntouchedOnError:
    """Issue 9, item 1: nothing is fused partially."""

    @pytest.mark.parametrize("inplace", [True, False])
    def test_unsupported_later_block(self, inplace):
        model = torchvision.models.resnet18()
        model.layer3[0] = nn.Sequential(nn.Conv2d(128, 256, 3, 2, 1))
        blocks = {f"layer{i}.{j}": block
                  for i in range(1, 5) for j, block in enumerate(getattr(model, f"layer{i}"))}
        params = dict(model.named_parameters())
        with pytest.raises(fusedres.UnsupportedModelError, match=r"layer3\.0: unsupported block"):
            fusedres.fuse(model, inplace=inplace)
        for name, block in blocks.items():
            i, j = name[len("layer"):].split(".")
            now = getattr(model, f"layer{i}")[int(j)]
            assert now is block, f"{name} was replaced by {type(now).__qualname__}"
            if name != "layer3.0":
                assert type(now) is torchvision.models.resnet.BasicBlock, name
        assert list(dict(model.named_parameters())) == list(params)
        for name, p in model.named_parameters():
            assert p is params[name], name


# ---------------------------------------------------------------- subclasses
# The fused launch computes nn.Conv2d / nn.BatchNorm2d / nn.ReLU from their parameters and
# never calls their forward, so a subclass that changes forward would be fused silently
# wrong: both converters and FusedConvBN accept the exact classes only (fusedres.supported).

class DoublingConv2d(nn.Conv2d):
    def forward(self, x):
        return 2 * super().forward(x)


class ShiftedBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) + 1


class LeakyReLU(nn.ReLU):
    def forward(self, x):
        return torch.nn.functional.leaky_relu(x)


def _subclassed(part):
    model = torchvision.models.resnet18()
    block = model.layer2[1]
    if part == "conv":
        block.conv2 = DoublingConv2d(128, 128, 3, 1, 1, bias=False)
    elif part == "bn":
        block.bn1 = ShiftedBatchNorm2d(128)
    elif part == "downsample_conv":
        model.layer3[0].downsample[0] = DoublingConv2d(128, 256, 1, 2, bias=False)
    elif part == "relu":
        block.relu = LeakyReLU()
    elif part == "stem_relu":
        model.relu = LeakyReLU()
    return model


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("part,match", [
    ("conv", r"^layer2\.1\.conv2/bn2: expected nn.Conv2d itself \(a subclass may change what "
             r"forward computes\), got .*DoublingConv2d$"),
    ("bn", r"^layer2\.1\.conv1/bn1: expected nn.BatchNorm2d itself \(a subclass may change "
           r"what forward computes.*\), got .*ShiftedBatchNorm2d$"),
    ("downsample_conv", r"^layer3\.0\.downsample: expected nn.Conv2d itself .*, got "
                        r".*DoublingConv2d$"),
    ("relu", r"^layer2\.1\.relu: expected nn.ReLU .*got .*LeakyReLU"),
    ("stem_relu", r"^relu: expected nn.ReLU .*got .*LeakyReLU"),
])
def test_subclass_is_refused_and_model_untouched(part, match, inplace):
    model = _subclassed(part)
    modules = dict(model.named_modules())
    types = {name: type(m) for name, m in modules.items()}
    params = dict(model.named_parameters())
    with pytest.raises(fusedres.UnsupportedModelError, match=match):
        fusedres.fuse(model, inplace=inplace)
    assert {name: type(m) for name, m in model.named_modules()} == types
    for name, module in model.named_modules():
        assert module is modules[name], name
    assert list(dict(model.named_parameters())) == list(params)
    for name, p in model.named_parameters():
        assert p is params[name], name


def test_error_is_a_value_error_and_public():
    assert fusedres.UnsupportedModelError is supported.UnsupportedModelError
    assert issubclass(fusedres.UnsupportedModelError, ValueError)


# ---------------------------------------------------------------- who imports whom

def test_fuse_imports_neither_torchvision_nor_timm():
    """``import fusedres`` and ``fusedres.fuse`` import neither library; fusing a torchvision
    model does not import the timm converter (which imports timm)."""
    code = ("import sys, fusedres\n"
            "fusedres.fuse, fusedres.UnsupportedModelError\n"
            "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
            "assert 'timm' not in sys.modules, 'timm imported'\n"
            "import torch, torchvision\n"
            "fusedres.fuse(torchvision.models.resnet18())\n"
            "assert 'timm' not in sys.modules, 'timm imported'\n"
            "assert 'fusedres.timm_resnet' not in sys.modules, 'timm converter imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _imported_modules(path):
    """The fusedres modules ``path`` imports, relative ones resolved (``.supported`` ->
    ``fusedres.supported``), anywhere in the file (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # inside fusedres/: `from . import x`, `from .x import y`
                base = "fusedres" + (f".{node.module}" if node.module else "")
            else:
                base = node.module
            if node.module:  # `from . import x` names x, not the package
                names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "fusedres" or n.startswith("fusedres.")}


def test_converters_do_not_import_each_other():
    """What they share is fusedres.supported; the dispatcher fusedres.fusing sits above both.
    (Layering and import circles in general: tests/test_imports.py.)"""
    package = ROOT / "fusedres"
    torchvision_side = _imported_modules(package / "convert_torchvision.py")
    timm_side = _imported_modules(package / "timm_resnet.py")
    assert "fusedres.supported" in torchvision_side and "fusedres.supported" in timm_side
    assert not {"fusedres.timm_resnet", "fusedres.fusing"} & torchvision_side
    assert not {"fusedres.convert_torchvision", "fusedres.fusing"} & timm_side
