"""Triton kernels and their launchers (installed as ``fusedres.kernels``).

Knows tensors, shapes and dtypes; never imports from ``fusedres``.
"""
from .conv_bn_act import GPU_CONFIGS, INTERPRETED, SUPPORTED_DTYPES, conv_bn_act
from .layout import pack_weight

__all__ = ["GPU_CONFIGS", "INTERPRETED", "SUPPORTED_DTYPES", "conv_bn_act", "pack_weight"]
