"""``fuse(model)``: turn a torchvision ResNet into a FusedResNet with the same weights (timm's
ResNet family: ``fusedres.timm_resnet``)."""
import copy
import sys

from torch import nn

from .folding import FoldCache, check_foldable
from .resnet import FusedBasicBlock, FusedBottleneck, FusedResNet

_MODEL_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                   "avgpool", "fc")
_MODEL_TYPES = {"relu": nn.ReLU, "maxpool": nn.MaxPool2d, "avgpool": nn.AdaptiveAvgPool2d,
                "fc": nn.Linear}
_BLOCKS = {  # torchvision class name -> (fused class, required children)
    "BasicBlock": (FusedBasicBlock, ("conv1", "bn1", "relu", "conv2", "bn2")),
    "Bottleneck": (FusedBottleneck, ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu")),
}


class UnsupportedModelError(ValueError):
    """The model, or a part of it, is not something fusedres can fuse exactly."""


def _torchvision_class(name):
    """torchvision's class ``name`` if torchvision is already imported (a torchvision object
    was passed in), else None: fusedres never imports torchvision itself here."""
    module = sys.modules.get("torchvision.models.resnet")
    return getattr(module, name, None) if module is not None else None


def _timm_resnet_class():
    """timm's ResNet class if timm's resnet module is already imported, else None: like
    torchvision, timm is never imported by fusedres itself."""
    module = sys.modules.get("timm.models.resnet")
    return getattr(module, "ResNet", None) if module is not None else None


def _check_class(obj, name, where):
    """``obj`` must be torchvision's ``name`` (or a subclass that keeps its forward)."""
    base = _torchvision_class(name)
    if base is None or not isinstance(obj, base):
        raise UnsupportedModelError(f"{where}: expected torchvision's {name}, got "
                                    f"{type(obj).__module__}.{type(obj).__qualname__}")
    for method in ("forward", "_forward_impl"):
        if getattr(type(obj), method, None) is not getattr(base, method, None):
            raise UnsupportedModelError(f"{where}: {type(obj).__qualname__} overrides "
                                        f"{method}(); only torchvision's own forward is fused")


def _check_children(module, required, optional, where):
    names = [n for n, _ in module.named_children()]
    missing = [n for n in required if n not in names]
    unknown = [n for n in names if n not in required and n not in optional]
    if missing or unknown:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
        raise UnsupportedModelError(f"{where}: unexpected structure ({'; '.join(parts)})")


def _check_downsample(ds, where):
    if not (isinstance(ds, nn.Sequential) and len(ds) == 2):
        raise UnsupportedModelError(f"{where}: downsample must be Sequential(Conv2d 1x1, "
                                    f"BatchNorm2d), got {ds!r}")
    conv, bn = ds[0], ds[1]
    try:
        check_foldable(conv, bn, where)
    except ValueError as e:
        raise UnsupportedModelError(str(e)) from None
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1 \
            or conv.dilation != (1, 1):
        raise UnsupportedModelError(f"{where}: downsample convolution must be 1x1, no padding, "
                                    f"groups=1, got {conv!r}")


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
    raise UnsupportedModelError(f"{where}: unsupported block type "
                                f"{type(block).__module__}.{type(block).__qualname__}; "
                                "expected torchvision's BasicBlock or Bottleneck")


def _check_block(block, where):
    """The fused class for ``block``, or UnsupportedModelError naming what does not fit."""
    kind = _block_kind(block, where)
    _check_class(block, kind, where)
    fused_cls, required = _BLOCKS[kind]
    _check_children(block, required, ("downsample",), where)
    for conv, bn in fused_cls._PAIRS:
        try:
            check_foldable(getattr(block, conv), getattr(block, bn), f"{where}.{conv}/{bn}")
        except ValueError as e:
            raise UnsupportedModelError(str(e)) from None
    if not isinstance(block.relu, nn.ReLU):
        raise UnsupportedModelError(f"{where}.relu: expected nn.ReLU, "
                                    f"got {type(block.relu).__name__}")
    if block.downsample is not None:
        _check_downsample(block.downsample, f"{where}.downsample")
    return fused_cls


def _fuse_block(block, fused_cls):
    fused = _rebuild(fused_cls, block, ("downsample", "stride"))
    fused._init_caches()
    return fused


def fuse(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Return a FusedResNet computing the same function as the torchvision ResNet ``model``;
    for timm's ResNet family, a fused timm ResNet (``fusedres.timm_resnet.fuse_timm``).

    Any depth, BasicBlock or Bottleneck, width and groups (wide_resnet, resnext),
    ``replace_stride_with_dilation``, ``zero_init_residual`` and ``num_classes`` are
    accepted.  ``state_dict()`` keys and values are the input's.  With ``inplace=False`` (the
    default) the model is deep-copied first; with ``inplace=True`` the fused model shares the
    input's submodules and parameters (no copy, and the original must not be used for
    something else).  Anything that is not a torchvision-style ResNet raises
    ``UnsupportedModelError`` naming the part; the whole model is checked before anything is
    changed, so when ``fuse`` raises, the input model is untouched in both modes.
    """
    if isinstance(model, FusedResNet):
        return model if inplace else copy.deepcopy(model)
    timm_resnet = _timm_resnet_class()
    if timm_resnet is not None and isinstance(model, timm_resnet):
        from .timm_resnet import fuse_timm
        return fuse_timm(model, inplace=inplace)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torchvision ResNet, got {type(model).__name__}")
    _check_class(model, "ResNet", "model")
    _check_children(model, _MODEL_CHILDREN, (), "model")
    try:
        check_foldable(model.conv1, model.bn1, "conv1/bn1")
    except ValueError as e:
        raise UnsupportedModelError(str(e)) from None
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
    return fused
