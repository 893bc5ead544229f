"""Triton kernels and their launchers (installed as ``fusedres.kernels``).

Knows tensors, shapes and dtypes; never imports from ``fusedres``.
"""
from .fused_conv import (INTERPRETED, SUPPORTED_DTYPES, conv_bn_act, conv_output_size,
                         cudnn_allows_tf32)
from .layout import pack_weight
from .scale_add import scale_add_act

__all__ = ["INTERPRETED", "SUPPORTED_DTYPES", "conv_bn_act", "conv_output_size",
           "cudnn_allows_tf32", "pack_weight", "scale_add_act"]
