"""The fused convolution: ``act(conv(x) [+ shortcut] + bias [+ residual])`` in one kernel.

    geometry.py      ConvGeometry: one launch's shapes, options and dtype; its kernel scalars
    configs.py       ConvConfig, the tile tables and the candidate policy
    launcher.py      conv_bn_act: checks, config choice, launch (and split-K's second kernel)
    plan.py          LaunchPlan: a launch replayed without the launcher (guards + one call)
    cudnn.py         the cuDNN backend: the same computation by torch ops (a tuner candidate,
                     and fusedres' CPU path)
    backends.py      which backends the tuner may choose (FUSEDRES_BACKENDS, triton_only)
    kernel.py        the entry JIT kernel: programs -> tiles (one each, or persistent)
    tile.py          one output tile: pixels, K range, walks, epilogue
    walk_*.py        its K walks (taps, gathered, strips, tma, shortcut), @triton.jit
                     helpers Triton inlines
    dot.py           the tile product the walks accumulate with
    epilogue.py      bias, residual, ReLU and the store
    split_k.py       split-K's reduction + epilogue kernel
"""
from .configs import ConvConfig
from .backends import triton_only
from .cudnn import conv_bn_act_torch
from .geometry import ConvGeometry, Shortcut, conv_output_size
from .launcher import Launch, conv_bn_act, conv_bn_act_with_plan, record_launches
from .plan import LaunchPlan

__all__ = ["ConvConfig", "ConvGeometry", "Launch", "LaunchPlan", "Shortcut", "conv_bn_act",
           "conv_bn_act_torch", "conv_bn_act_with_plan", "conv_output_size", "record_launches",
           "triton_only"]
