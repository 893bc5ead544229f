"""What both converters (``fusedres.convert_torchvision``, ``fusedres.timm_resnet``) and the
fused modules require of the parts they fuse, and the error that names a part that does not
fit.  One policy for the layers the kernels compute instead of running them (Conv2d,
BatchNorm2d, ReLU): exact classes, never subclasses.

Imports nothing from fusedres, so any layer above may use it.
"""
from torch import nn


class UnsupportedModelError(ValueError):
    """The model, or a part of it, is not something fusedres can fuse exactly."""


def type_name(obj) -> str:
    """``module.QualName`` of ``obj``'s class, as error messages show it."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def expect_type(module, types, where: str, what: str) -> None:
    """``module`` must be exactly one of ``types``: a subclass may change what its forward
    computes, and the fused path does not run that forward."""
    if type(module) not in types:
        raise UnsupportedModelError(f"{_at(where)}expected {what}, got {type_name(module)}")


_SUBCLASS = "a subclass may change what forward computes"


def check_foldable(conv, bn, where: str = "") -> None:
    """Raise UnsupportedModelError naming ``where`` unless ``bn(conv(x))`` is something the
    fused kernel computes exactly: an ``nn.Conv2d`` with explicit zero padding and square
    stride/padding/dilation, followed by an ``nn.BatchNorm2d`` over its output channels that
    tracks running statistics.

    Exact classes only, for every converter and for ``FusedConvBN``: the fused launch computes
    the base classes' function from their parameters and attributes and never calls their
    ``forward``, so a subclass that changes what forward computes (timm's ``Conv2dSame`` pads
    in forward, ``BatchNormAct2d`` adds an activation, a user's class may override
    ``forward`` or ``_conv_forward``) would be fused silently wrong.  It is refused instead.
    (``UnsupportedModelError`` is a ``ValueError``.)
    """
    at = _at(where)
    if type(conv) is not nn.Conv2d:
        raise UnsupportedModelError(f"{at}expected nn.Conv2d itself ({_SUBCLASS}), got "
                                    f"{type_name(conv)}")
    if type(bn) is not nn.BatchNorm2d:
        raise UnsupportedModelError(f"{at}expected nn.BatchNorm2d itself ({_SUBCLASS}; "
                                    "GroupNorm, FrozenBatchNorm2d and other norms are not "
                                    f"fused), got {type_name(bn)}")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise UnsupportedModelError(f"{at}unsupported padding {conv.padding!r}/"
                                    f"{conv.padding_mode!r}: only explicit zero padding is fused")
    for name in ("stride", "padding", "dilation"):
        value = getattr(conv, name)
        if value[0] != value[1]:
            raise UnsupportedModelError(f"{at}unsupported non-square {name} {tuple(value)}")
    if bn.num_features != conv.out_channels:
        raise UnsupportedModelError(f"{at}BatchNorm2d has {bn.num_features} features but the "
                                    f"convolution has {conv.out_channels} output channels")
    if not bn.track_running_stats:
        raise UnsupportedModelError(f"{at}BatchNorm2d without running statistics cannot be "
                                    "folded")


def check_relu(act, where: str) -> None:
    """A ReLU the fused kernels apply in their epilogue (so its forward never runs)."""
    expect_type(act, (nn.ReLU,), where, "nn.ReLU (the only activation the fused kernels apply)")


def check_shortcut_conv(conv, where: str) -> None:
    """The convolution of a downsample shortcut that is accumulated into a block's last
    launch: 1x1, no padding, one group, no dilation (after ``check_foldable``)."""
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1 \
            or conv.dilation != (1, 1):
        raise UnsupportedModelError(f"{_at(where)}downsample convolution must be 1x1, no "
                                    f"padding, groups=1, got {conv!r}")


def check_children(module, required, optional, where: str) -> None:
    """``module``'s children must be all of ``required`` and otherwise only ``optional``:
    a child the fused forward does not know about would be skipped silently."""
    names = [n for n, _ in module.named_children()]
    missing = [n for n in required if n not in names]
    unknown = [n for n in names if n not in required and n not in optional]
    if missing or unknown:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
        raise UnsupportedModelError(f"{_at(where)}unexpected structure ({'; '.join(parts)})")
