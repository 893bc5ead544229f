"""The cuDNN backend of ``conv_bn_act``: the folded convolution through ``F.conv2d`` (cuDNN on
CUDA) with its folded bias, then in place the shortcut's folded 1x1 convolution (after
ResNet-D's 2x2 average pool), the residual and the ReLU, NaN-keeping as eager's.

``conv_bn_act_torch`` is the computation on torch-layout weights: ``fusedres.ops`` runs it on
CPU tensors.  ``conv_bn_act_cudnn`` runs it on the launcher's packed weights, as the tuner's
``cudnn`` candidate (configs.CUDNN) beside the Triton tiles: their torch layout is made once
per packed weight.  Whether the tuner offers it: kernels/conv/backends.py.
"""
import threading
import weakref

import torch
import torch.nn.functional as F

def conv_bn_act_torch(x, weight, bias, stride, padding, dilation, groups, relu,
                      residual=None, shortcut=None, shortcut_pool=False):
    """``act(conv(x, weight) + bias [+ conv1x1(pool?(xs), ws)] [+ residual])`` by torch ops.

    ``weight``: [C_out, C_in/groups, KH, KW]; ``bias``: [C_out] in ``x``'s dtype (the
    shortcut's folded bias included); ``shortcut``: ``(xs, ws, stride_s)`` with ``ws``
    [C_out, C_s, 1, 1]; ``shortcut_pool``: ``xs`` is averaged over 2x2 windows (ceil mode,
    padding not counted) first and ``stride_s`` is the 1x1 convolution's own (1).  Returns
    a new channels_last tensor.
    """
    y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, stride,
                 padding, dilation, groups)
    if shortcut is not None:
        xs, ws, stride_s = shortcut
        if shortcut_pool:
            xs = F.avg_pool2d(xs, 2, 2, ceil_mode=True, count_include_pad=False)
        y.add_(F.conv2d(xs.contiguous(memory_format=torch.channels_last), ws, None, stride_s))
    if residual is not None:
        y.add_(residual)
    return y.relu_() if relu else y


def conv_bn_act_cudnn(x, weight, bias, kh, kw, stride, padding, dilation, groups, relu,
                      residual=None, shortcut=None, shortcut_pool=False):
    """``conv_bn_act_torch`` on the launcher's arguments: the packed weight
    [KH*KW*C_in/groups, C_out], the float32 bias, ``shortcut`` = ``(xs, packed ws,
    stride_s)`` where a pooled shortcut's stride is the pool's (2)."""
    w, b = _torch_layout(weight, bias, kh, kw, x.dtype)
    if shortcut is not None:
        xs, ws, stride_s = shortcut
        shortcut = (xs, _torch_layout(ws, None, 1, 1, x.dtype)[0],
                    1 if shortcut_pool else stride_s)
    return conv_bn_act_torch(x, w, b, stride, padding, dilation, groups, relu, residual,
                             shortcut, shortcut_pool)


# id(packed weight) -> (weak reference, its version, bias, (torch-layout weight, bias in the
# activation dtype)); an entry goes with its packed weight.
_LAYOUTS = {}
_LAYOUTS_LOCK = threading.Lock()


def _torch_layout(packed, bias, kh, kw, dtype):
    """``packed`` [KH*KW*C_in/groups, C_out] as a channels_last [C_out, C_in/groups, KH, KW]
    weight, and ``bias`` (or None) in ``dtype``; made once per packed weight and version."""
    key = id(packed)
    entry = _LAYOUTS.get(key)
    version = None if packed.is_inference() else packed._version  # inference: no counter
    if entry is not None and entry[0]() is packed and entry[1] == version and entry[2] is bias:
        return entry[3]
    rows, c_out = packed.shape
    weight = (packed.detach().view(kh, kw, rows // (kh * kw), c_out).permute(3, 2, 0, 1)
              .contiguous(memory_format=torch.channels_last))
    made = (weight, None if bias is None else bias.detach().to(dtype))
    with _LAYOUTS_LOCK:
        _LAYOUTS[key] = (weakref.ref(packed, lambda _, key=key: _forget(key)),
                         version, bias, made)
    return made


def _forget(key):
    with _LAYOUTS_LOCK:
        _LAYOUTS.pop(key, None)
