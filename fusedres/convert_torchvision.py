"""torchvision's ResNet (``torchvision.models.resnet.ResNet``) -> ``FusedResNet`` with the same
weights; reached through ``fusedres.fuse``.

Never imports torchvision: a torchvision model was passed in, so torchvision is imported
already, and its classes are looked up in ``sys.modules``.
"""
import copy
import sys

from torch import nn

from .folding import FoldCache
from .plans import PlanGate
from .resnet import FusedBasicBlock, FusedBottleneck, FusedResNet
from .supported import (UnsupportedModelError, check_children, check_foldable, check_relu,
                        check_shortcut_conv, type_name)

_MODEL_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                   "avgpool", "fc")
# Run as they are by FusedResNet's forward (the stem's relu is fused: checked exactly).
_MODEL_TYPES = {"maxpool": nn.MaxPool2d, "avgpool": nn.AdaptiveAvgPool2d, "fc": nn.Linear}
_BLOCKS = {  # torchvision class name -> (fused class, required children)
    "BasicBlock": (FusedBasicBlock, ("conv1", "bn1", "relu", "conv2", "bn2")),
    "Bottleneck": (FusedBottleneck, ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu")),
}


def _torchvision_class(name):
    """torchvision's class ``name`` if torchvision is already imported (a torchvision object
    was passed in), else None: fusedres never imports torchvision itself here."""
    module = sys.modules.get("torchvision.models.resnet")
    return getattr(module, name, None) if module is not None else None


def _check_class(obj, name, where):
    """``obj`` must be torchvision's ``name`` (or a subclass that keeps its forward)."""
    base = _torchvision_class(name)
    if base is None or not isinstance(obj, base):
        raise UnsupportedModelError(f"{where}: expected torchvision's {name}, got "
                                    f"{type_name(obj)}")
    for method in ("forward", "_forward_impl"):
        if getattr(type(obj), method, None) is not getattr(base, method, None):
            raise UnsupportedModelError(f"{where}: {type(obj).__qualname__} overrides "
                                        f"{method}(); only torchvision's own forward is fused")


def _check_downsample(ds, where):
    if not (isinstance(ds, nn.Sequential) and len(ds) == 2):
        raise UnsupportedModelError(f"{where}: downsample must be Sequential(Conv2d 1x1, "
                                    f"BatchNorm2d), got {ds!r}")
    check_foldable(ds[0], ds[1], where)
    check_shortcut_conv(ds[0], where)


def _rebuild(cls, source, attrs):
    """An instance of ``cls`` holding ``source``'s children (same order, so the same
    state_dict key order) and plain attributes, without running ``cls.__init__``."""
    target = cls.__new__(cls)
    nn.Module.__init__(target)
    for name, child in source.named_children():
        setattr(target, name, child)
    for attr in attrs:
        setattr(target, attr, getattr(source, attr))
    target.train(source.training)
    return target


def _block_kind(block, where):
    for name in _BLOCKS:
        base = _torchvision_class(name)
        if base is not None and isinstance(block, base):
            return name
    raise UnsupportedModelError(f"{where}: unsupported block type {type_name(block)}; "
                                "expected torchvision's BasicBlock or Bottleneck")


def _check_block(block, where):
    """The fused class for ``block``, or UnsupportedModelError naming what does not fit."""
    kind = _block_kind(block, where)
    _check_class(block, kind, where)
    fused_cls, required = _BLOCKS[kind]
    check_children(block, required, ("downsample",), where)
    for conv, bn in fused_cls._PAIRS:
        check_foldable(getattr(block, conv), getattr(block, bn), f"{where}.{conv}/{bn}")
    check_relu(block.relu, f"{where}.relu")
    if block.downsample is not None:
        _check_downsample(block.downsample, f"{where}.downsample")
    return fused_cls


def _fuse_block(block, fused_cls):
    fused = _rebuild(fused_cls, block, ("downsample", "stride"))
    fused._init_caches()
    return fused


def fuse_torchvision(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``fusedres.fuse`` for torchvision's ResNet (see there): a ``FusedResNet`` holding
    ``model``'s submodules.  The whole model is checked before anything changes."""
    if isinstance(model, FusedResNet):
        return model if inplace else copy.deepcopy(model)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torchvision ResNet, got {type(model).__name__}")
    _check_class(model, "ResNet", "model")
    check_children(model, _MODEL_CHILDREN, (), "model")
    check_foldable(model.conv1, model.bn1, "conv1/bn1")
    check_relu(model.relu, "relu")
    for name, cls in _MODEL_TYPES.items():
        if not isinstance(getattr(model, name), cls):
            raise UnsupportedModelError(f"{name}: expected {cls.__name__}, got "
                                        f"{type(getattr(model, name)).__name__}")
    # Check every block before changing anything: with inplace=True a failure half-way
    # through would otherwise leave the caller's model part fused.
    fused_classes = {}
    for i in range(1, 5):
        layer = getattr(model, f"layer{i}")
        if not isinstance(layer, nn.Sequential):
            raise UnsupportedModelError(f"layer{i}: expected nn.Sequential, got {type(layer).__name__}")
        for j in range(len(layer)):
            fused_classes[i, j] = _check_block(layer[j], f"layer{i}.{j}")
    if not inplace:
        model = copy.deepcopy(model)
    for (i, j), fused_cls in fused_classes.items():
        layer = getattr(model, f"layer{i}")
        layer[j] = _fuse_block(layer[j], fused_cls)
    fused = _rebuild(FusedResNet, model, ("inplanes", "dilation", "groups", "base_width",
                                          "_norm_layer"))
    fused._stem_fold = FoldCache()
    fused._plan_gate = PlanGate()
    return fused
