"""fusedres: ResNet inference with convolution, BatchNorm, residual add and ReLU fused into
single Triton kernels.

    import fusedres
    model = fusedres.fuse(torchvision_resnet)        # or fusedres.resnet50(weights=...)
    model = fusedres.fuse(timm_resnet)               # timm's ResNet family (fusedres.timm_resnet)

The public names are imported on first use (PEP 562), so ``import fusedres`` and the command
line's ``--help`` do not import torch; ``import fusedres`` imports neither torchvision nor timm.
"""
import importlib
import sys

from ._source_checkout import install_checkout_kernels

install_checkout_kernels()  # a source checkout's kernels/ as fusedres.kernels (imports nothing)

if "torch" in sys.modules:
    # Register torch.ops.fusedres.conv_bn_act (and its old name fused_launch) now, so that a
    # saved torch.export program using it loads right after `import fusedres`.  Without
    # torch imported yet (the command line's --help) nothing is imported; any fusedres model
    # or function registers it too.
    importlib.import_module(".library", __name__)

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_EXPORTS = {
    "UnsupportedModelError": "supported", "fuse": "fusing",
    "CUDAGraphRunner": "cuda_graphs",
    "fold_bn": "folding", "forget_folds": "folding",
    "FusedConvBN": "modules",
    "FusedBasicBlock": "resnet", "FusedBottleneck": "resnet", "FusedResNet": "resnet",
    "warmup": "precompile",
    **dict.fromkeys(["MODELS", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                     "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
                     "wide_resnet50_2", "wide_resnet101_2"], "models"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name == "kernels":  # the kernel layer, as `fusedres.kernels`
        return importlib.import_module(".kernels", __name__)
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fusedres' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
