"""``torch.ops.fusedres.conv_bn_act``: the Triton launch as a PyTorch custom operator.

Registering it lets ``torch.compile(fullgraph=True)`` and ``torch.export`` trace a fused
model without a graph break: the compiler sees one opaque operator per ``conv_bn_act``, with
a fake implementation for shapes, dtypes and strides.

It is registered with ``torch.library.custom_op`` rather than ``triton_op``/``wrap_triton``:
the launcher picks its config in Python (one fixed config under the interpreter, an autotuner
with config pruning on a GPU) and validates its inputs, which the compiler's Triton tracing
cannot follow, and the CPU-only machines this project is verified on cannot exercise
Inductor's Triton code generation at all.  An opaque operator costs nothing at run time
here: the kernel already carries the whole epilogue, so there is nothing left to fuse into it.

``torch.ops.fusedres.fused_launch`` is the operator's name before it was renamed; it is
still registered (the same implementation) so that programs exported before the rename load.
"""
from typing import List, Optional

import torch


def _conv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 residual: Optional[torch.Tensor], shortcut_x: Optional[torch.Tensor],
                 shortcut_weight: Optional[torch.Tensor], kernel_size: List[int], stride: int,
                 padding: int, dilation: int, groups: int, shortcut_stride: int,
                 shortcut_pool: bool, relu: bool, allow_tf32: bool) -> torch.Tensor:
    """See ``fusedres.kernels.conv_bn_act``; ``weight``/``shortcut_weight`` are packed."""
    # Imported on first launch, not at module level: `import fusedres` registers this
    # operator, and should not import Triton (and fix TRITON_INTERPRET) for a program that
    # may never launch it.
    from . import kernels
    shortcut = None if shortcut_x is None else (shortcut_x, shortcut_weight, shortcut_stride)
    return kernels.conv_bn_act(
        x, weight, bias, kernel_size=tuple(kernel_size), stride=stride, padding=padding,
        dilation=dilation, groups=groups, relu=relu, residual=residual, shortcut=shortcut,
        shortcut_pool=shortcut_pool, allow_tf32=allow_tf32)


def _conv_bn_act_fake(x, weight, bias, residual, shortcut_x, shortcut_weight, kernel_size,
                      stride, padding, dilation, groups, shortcut_stride, shortcut_pool, relu,
                      allow_tf32):
    from . import kernels  # lazily, as in _conv_bn_act
    shortcut = None if shortcut_x is None else kernels.Shortcut(
        *shortcut_x.shape[1:], shortcut_stride, shortcut_pool)
    geometry = kernels.ConvGeometry(*x.shape, weight.shape[1], tuple(kernel_size), stride,
                                    padding, dilation, groups, relu, residual is not None,
                                    shortcut, x.dtype)
    return torch.empty(geometry.output_shape, dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


conv_bn_act = torch.library.custom_op("fusedres::conv_bn_act", _conv_bn_act, mutates_args=())
conv_bn_act.register_fake(_conv_bn_act_fake)

# The same operator under its name before the rename.  It exists only so that programs
# exported (torch.export.save) with `torch.ops.fusedres.fused_launch` still load and run;
# nothing in fusedres calls it.
fused_launch = torch.library.custom_op("fusedres::fused_launch", _conv_bn_act, mutates_args=())
fused_launch.register_fake(_conv_bn_act_fake)
