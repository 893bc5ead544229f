"""fusedres: ResNet inference with convolution, BatchNorm, residual add and ReLU fused into
single Triton kernels.

    import fusedres
    model = fusedres.fuse(torchvision_resnet)        # or fusedres.resnet50(weights=...)
"""
from ._source_checkout import load_kernels_from_checkout

load_kernels_from_checkout()  # before anything imports fusedres.kernels

from .convert import UnsupportedModelError, fuse
from .cuda_graphs import CUDAGraphRunner
from .folding import fold_bn
from .models import (MODELS, resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                     resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2)
from .modules import FusedConvBN
from .warmup import warmup
from .resnet import FusedBasicBlock, FusedBottleneck, FusedResNet

__version__ = "0.1.0"
__all__ = [
    "CUDAGraphRunner", "FusedBasicBlock", "FusedBottleneck", "FusedConvBN", "FusedResNet", "MODELS",
    "UnsupportedModelError", "fold_bn", "fuse", "resnet18", "resnet34", "resnet50",
    "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "warmup", "wide_resnet50_2", "wide_resnet101_2",
]
