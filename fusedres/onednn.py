"""The CPU path on oneDNN: folded weights prepacked once, the bias and the residual add done
by the convolution itself.

``F.conv2d`` on CPU reorders its weight into oneDNN's blocked layout on every call; here the
folded weight is reordered once (``torch.ops.mkldnn._reorder_convolution_weight``, the op
PyTorch Inductor's CPU backend emits after freezing) and kept in the fold cache.  The
convolution then adds the bias and, as a binary post-op, the residual (or the shortcut
convolution's output) before its only store.

The ReLU is NOT a post-op: oneDNN's ReLU post-op turns NaN into 0 (measured: a NaN input gave
0 NaN outputs where ``torch.relu`` gives 576), and a fused model must show NaN where eager
does.  It runs as an in-place ``relu_`` on the output instead.

``AVAILABLE`` says whether this build of torch on this CPU has the ops and they agree with
``F.conv2d`` (checked once, at import); where not, ``fusedres.ops`` keeps the plain torch-ops
path.  bf16 runs here only where oneDNN reports native bf16 support; fp16 never does.
"""
import torch
import torch.nn.functional as F

_CL = torch.channels_last


def _params(conv):
    return (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)


def prepack(weight: torch.Tensor, conv, input_shape) -> torch.Tensor:
    """``weight`` ([C_out, C_in/groups, KH, KW], already folded and cast) in oneDNN's layout
    for ``conv``'s parameters.  ``input_shape`` guides the layout choice only: the prepacked
    weight is correct for any input shape."""
    padding, stride, dilation, groups = _params(conv)
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight.contiguous(memory_format=_CL), padding, stride, dilation, groups,
        list(input_shape))


def conv_add(x: torch.Tensor, weight: torch.Tensor, bias, conv, other=None) -> torch.Tensor:
    """``conv(x) + bias [+ other]`` with a prepacked ``weight``; channels_last output."""
    x = x.contiguous(memory_format=_CL)
    if other is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *_params(conv),
                                                       "none", [], "")
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other.contiguous(memory_format=_CL), weight, bias, *_params(conv),
        "add", None, None, [], "")


def supports(dtype: torch.dtype) -> bool:
    """Whether this path serves activations of ``dtype`` on this machine."""
    if not AVAILABLE:
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return False


def _probe() -> bool:
    """The ops exist, run and agree with F.conv2d on a small residual 3x3 convolution."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, 8, 5, 5, generator=generator).contiguous(memory_format=_CL)
        conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        weight = torch.randn(8, 8, 3, 3, generator=generator)
        bias = torch.randn(8, generator=generator)
        other = torch.randn(1, 8, 5, 5, generator=generator)
        out = conv_add(x, prepack(weight, conv, x.shape), bias, conv, other)
        return torch.allclose(out, F.conv2d(x, weight, bias, padding=1) + other, atol=1e-4)
    except (RuntimeError, AttributeError, TypeError):
        return False


AVAILABLE = _probe()
