"""Triton kernels and their launchers (installed as ``fusedres.kernels``).

Knows tensors, shapes and dtypes; never imports from ``fusedres``.

    conv/        the fused convolution (conv_bn_act) and its configs
    scale_add/   act(y * gate + residual), the end of an SE / ECA block
    gemm/        a plain persistent TMA GEMM, the benchmarks' Triton reference
    autotune.py  the tuner that stores its choices on disk
    checks.py    input checks shared by the launchers
    layout.py    the packed weight layout
    runtime.py   the interpreter, the device, cuDNN's TF32 setting, TMA's allocator
"""
from .checks import SUPPORTED_DTYPES
from .conv import (ConvConfig, ConvGeometry, Launch, LaunchPlan, Shortcut, conv_bn_act,
                   conv_bn_act_torch, conv_bn_act_with_plan, conv_output_size, record_launches,
                   triton_only)
from .layout import pack_weight
from .runtime import INTERPRETED, cudnn_allows_tf32
from .scale_add import scale_add_act

__all__ = ["INTERPRETED", "SUPPORTED_DTYPES", "ConvConfig", "ConvGeometry", "Launch",
           "LaunchPlan", "Shortcut", "conv_bn_act", "conv_bn_act_torch", "conv_bn_act_with_plan",
           "conv_output_size", "cudnn_allows_tf32", "pack_weight", "record_launches",
           "scale_add_act", "triton_only"]
