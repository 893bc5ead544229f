"""``conv_bn_act``: ``act(bn(conv(x)) [+ bn_s(conv_s(xs))] [+ residual])`` in one launch, on the
right backend; and the elementwise end of an attention block, ``act(y * gate + residual)``.

Backends, chosen per call from the input tensor:
  * CUDA tensors: the Triton kernel.
  * CPU tensors with ``TRITON_INTERPRET=1`` set before import: the same Triton kernel through
    the interpreter (slow; it is how the kernels are verified without a GPU).
  * other CPU tensors: the same folded computation through torch ops (folded conv, in-place
    add and ReLU, channels_last: ``kernels.conv_bn_act_torch``, also the GPU tuner's cuDNN
    candidate), which skips eager's separate BatchNorm pass.
"""
import os

import torch

from . import kernels, library, trace
from .folding import build_folded

# Launch plans (kernels/conv/plan.py) replay a launch site's last launch for a fraction of a
# normal launch's host work (docs/benchmarks.md); FUSEDRES_LAUNCH_PLANS=0 turns them off.
LAUNCH_PLANS = os.environ.get("FUSEDRES_LAUNCH_PLANS", "1").strip().lower() not in (
    "0", "false", "off", "no")


def uses_triton(x: torch.Tensor) -> bool:
    """Whether ``conv_bn_act`` on ``x`` runs the Triton kernel (natively or interpreted)."""
    return x.is_cuda or (kernels.INTERPRETED and x.device.type == "cpu")


def plans_launches(x: torch.Tensor) -> bool:
    """Whether launches on ``x`` may use launch plans: on the GPU (not interpreted), with
    plans on."""
    return LAUNCH_PLANS and x.is_cuda and not kernels.INTERPRETED


def tracing() -> bool:
    """True while torch.compile / torch.export trace the model."""
    return torch.compiler.is_compiling() or _is_exporting()


# torch.compiler.is_exporting is recent; older torch has no non-strict export to detect.
_is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)


def autocast_enabled(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device (CUDA or CPU; no other device has it here).
    Tensor flags, not ``x.device``: that builds an object, and this runs once per launch."""
    if x.is_cuda:
        return torch.is_autocast_enabled("cuda")
    return x.is_cpu and torch.is_autocast_enabled("cpu")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype eager PyTorch would convolve ``x`` in: the autocast dtype when autocast is
    on for ``x``'s device, else ``x``'s own."""
    return torch.get_autocast_dtype(x.device.type) if autocast_enabled(x) else x.dtype


def records_autograd(x: torch.Tensor, *modules) -> bool:
    """True when autograd would record a step on ``x`` through ``modules``: the fused
    kernels have no backward, so the caller must run the eager graph to keep gradients."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())


def check_input(x, conv, name="input"):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != conv.in_channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but the convolution expects "
                         f"{conv.in_channels}")
    if x.dtype not in kernels.SUPPORTED_DTYPES:
        raise TypeError(f"unsupported {name} dtype {x.dtype}; expected one of "
                        f"{', '.join(str(d) for d in kernels.SUPPORTED_DTYPES)}")


def conv_bn_act(x, conv, bn, cache, *, relu, residual=None, shortcut=None, shortcut_pool=False):
    """Eval-mode ``relu?(bn(conv(x)) [+ bn_s(conv_s(xs))] [+ residual])`` in one launch.

    ``cache`` is the call site's ``FoldCache``; ``shortcut`` is ``(conv_s, bn_s, xs)``, a 1x1
    convolution + BatchNorm of ``xs``; with ``shortcut_pool`` the convolution (stride 1) reads
    ``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)(xs)`` (ResNet-D), pooled inside
    the same launch.  Returns a channels_last tensor in the compute dtype (see
    ``compute_dtype``).  On the GPU the launch replays ``cache``'s launch plan for ``x``'s
    shape when it has one from the current fold, and leaves one for the next call.
    """
    check_input(x, conv)
    if not autocast_enabled(x) and x.dtype != conv.weight.dtype:
        # Said here, at the model's first step, rather than by the classifier much later.
        raise TypeError(f"input has dtype {x.dtype} but the model's parameters have dtype "
                        f"{conv.weight.dtype}; convert one to the other (model.to({x.dtype}) "
                        f"or x.to({conv.weight.dtype})), or run under torch.autocast")
    dtype = compute_dtype(x)
    x = x.to(dtype)
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a torch.Tensor, got {type(residual).__name__}")
        if autocast_enabled(x) or residual.dtype == dtype:
            residual = residual.to(dtype)
        else:
            raise TypeError(f"residual has dtype {residual.dtype} but the input has dtype {dtype}")
    pairs = [(conv, bn)]
    if shortcut is not None:
        conv_s, bn_s, xs = shortcut
        check_input(xs, conv_s, "shortcut input")
        xs = xs.to(dtype)
        pairs.append((conv_s, bn_s))
        if shortcut_pool and conv_s.stride[0] != 1:
            raise ValueError("a pooled shortcut's convolution must have stride 1 (the 2x2 "
                             f"average pool strides), got {conv_s.stride}")
        # The stride at which the shortcut's windows step over xs.
        stride_s = 2 if shortcut_pool else conv_s.stride[0]

    if trace.active():
        trace.note(kernels.ConvGeometry(
            *x.shape, conv.out_channels, conv.kernel_size, conv.stride[0], conv.padding[0],
            conv.dilation[0], conv.groups, relu, residual is not None,
            None if shortcut is None else kernels.Shortcut(*xs.shape[1:], stride_s,
                                                           shortcut_pool), dtype))

    triton = uses_triton(x)
    if tracing():
        # The compiler cannot follow the cache's identity checks; fold inside the graph
        # instead (a few weight-sized ops per step, and never stale under CUDA graphs).
        f = build_folded(pairs, dtype, x.device, packed=triton)
    else:
        f = cache.get(pairs, dtype, x.device, packed=triton)

    if triton:
        if tracing():
            return library.conv_bn_act(  # torch.ops.fusedres.conv_bn_act
                x, f.weight, f.bias, residual, None if shortcut is None else xs,
                f.shortcut_weight, list(conv.kernel_size), conv.stride[0], conv.padding[0],
                conv.dilation[0], conv.groups, 1 if shortcut is None else stride_s,
                shortcut is not None and shortcut_pool, relu, kernels.cudnn_allows_tf32())
        # Eager calls skip the dispatcher (microseconds per step matter at batch 1), and on
        # the GPU replay the launch site's plan for this input where it has one.
        planned = plans_launches(x)
        if planned:
            plan = cache.plan(x.shape, f)
            if plan is not None:
                y = plan(x, residual, None if shortcut is None else xs)
                if y is not None:
                    return y
        arguments = dict(
            kernel_size=conv.kernel_size, stride=conv.stride[0], padding=conv.padding[0],
            dilation=conv.dilation[0], groups=conv.groups, relu=relu, residual=residual,
            shortcut=None if shortcut is None else (xs, f.shortcut_weight, stride_s),
            shortcut_pool=shortcut_pool)
        if not planned:
            return kernels.conv_bn_act(x, f.weight, f.bias, **arguments)
        y, plan = kernels.conv_bn_act_with_plan(x, f.weight, f.bias, folded=f, **arguments)
        if plan is not None:
            cache.add_plan(x.shape, plan)
        return y

    if residual is not None:
        shape = (x.shape[0], conv.out_channels,
                 *(kernels.conv_output_size(size, k, s, p, d) for size, k, s, p, d in zip(
                     x.shape[2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation)))
        if residual.shape != shape:
            raise ValueError(f"residual has shape {tuple(residual.shape)} but the convolution "
                             f"produces {shape}")
    return kernels.conv_bn_act_torch(
        x, f.weight, f.bias, conv.stride, conv.padding, conv.dilation, conv.groups, relu,
        residual, None if shortcut is None else (xs, f.shortcut_weight, conv_s.stride),
        shortcut_pool)


def scale_add_act(y, gate, residual, *, relu=True):
    """Eval-mode ``relu?(y * gate + residual)`` (the end of an SE / ECA block) in one pass:
    the Triton kernel where ``conv_bn_act`` launches one, two in-place torch ops otherwise.
    While torch.compile / export trace, the torch ops (the compiler fuses them itself)."""
    if uses_triton(y) and not tracing():
        return kernels.scale_add_act(y, gate, residual, relu=relu)
    out = torch.addcmul(residual, y, gate)
    return out.relu_() if relu else out
