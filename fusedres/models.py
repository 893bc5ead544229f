"""torchvision-compatible constructors of the fused ResNet family."""
import os

import torch

from .resnet import FusedBasicBlock, FusedBottleneck, FusedResNet


def _state_dict(weights, progress):
    if isinstance(weights, (str, os.PathLike)):
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights file not found: {weights}")
        return torch.load(weights, map_location="cpu", weights_only=True)
    if hasattr(weights, "get_state_dict"):  # a torchvision Weights enum member
        return weights.get_state_dict(progress=progress, check_hash=True)
    raise TypeError("weights must be a torchvision Weights enum member or a path to a saved "
                    f"state_dict, got {type(weights).__name__}")


def _resnet(block, layers, weights, progress, **kwargs):
    meta = getattr(weights, "meta", None)
    if meta is not None and "categories" in meta:
        num_classes = len(meta["categories"])
        if kwargs.setdefault("num_classes", num_classes) != num_classes:
            raise ValueError(f"num_classes={kwargs['num_classes']} does not match the "
                             f"{num_classes} categories of {weights}")
    model = FusedResNet(block, layers, **kwargs)
    if weights is not None:
        model.load_state_dict(_state_dict(weights, progress), strict=True)
    return model


def _wide(kwargs, groups, width_per_group):
    kwargs.setdefault("groups", groups)
    kwargs.setdefault("width_per_group", width_per_group)
    return kwargs


def resnet18(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBasicBlock, [2, 2, 2, 2], weights, progress, **kwargs)


def resnet34(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBasicBlock, [3, 4, 6, 3], weights, progress, **kwargs)


def resnet50(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def resnet101(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def resnet152(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBottleneck, [3, 8, 36, 3], weights, progress, **kwargs)


def wide_resnet50_2(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBottleneck, [3, 4, 6, 3], weights, progress, **_wide(kwargs, 1, 128))


def wide_resnet101_2(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBottleneck, [3, 4, 23, 3], weights, progress, **_wide(kwargs, 1, 128))


def resnext50_32x4d(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBottleneck, [3, 4, 6, 3], weights, progress, **_wide(kwargs, 32, 4))


def resnext101_32x8d(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBottleneck, [3, 4, 23, 3], weights, progress, **_wide(kwargs, 32, 8))


def resnext101_64x4d(*, weights=None, progress=True, **kwargs):
    return _resnet(FusedBottleneck, [3, 4, 23, 3], weights, progress, **_wide(kwargs, 64, 4))


MODELS = {f.__name__: f for f in (
    resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, wide_resnet101_2,
    resnext50_32x4d, resnext101_32x8d, resnext101_64x4d)}
