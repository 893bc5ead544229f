"""Which fused launches a model makes: the geometry of every ``conv_bn_act`` call.

Used by ``fusedres inspect`` (compile every specialisation) and the layer benchmarks.
Tracing runs the model on the ``meta`` device, so it costs no memory or compute even for
batch 256 at 224x224.
"""
import contextlib
import copy
from typing import NamedTuple, Optional, Tuple

import torch

_active = []  # stack of lists collecting LaunchSpecs


class LaunchSpec(NamedTuple):
    """Everything that determines one kernel specialisation (and its autotune key)."""
    batch: int
    c_in: int
    height: int
    width: int
    c_out: int
    kernel_size: Tuple[int, int]
    stride: int
    padding: int
    dilation: int
    groups: int
    relu: bool
    residual: bool
    shortcut: Optional[Tuple[int, int, int, int]]  # (C_s, HS, WS, stride_s)
    dtype: torch.dtype
    shortcut_pool: bool = False  # the shortcut averages 2x2 windows (ResNet-D)

    def describe(self) -> str:
        kh, kw = self.kernel_size
        text = (f"{self.batch}x{self.c_in}x{self.height}x{self.width} -> {self.c_out} "
                f"{kh}x{kw}/s{self.stride}")
        if self.groups > 1:
            text += f" g{self.groups}"
        if self.dilation > 1:
            text += f" d{self.dilation}"
        if self.shortcut is not None:
            pool = "avg2x2 " if self.shortcut_pool else ""
            text += f" +shortcut({pool}{self.shortcut[0]}/s{self.shortcut[3]})"
        if self.residual:
            text += " +residual"
        return text + (" +relu" if self.relu else "")


def active() -> bool:
    return bool(_active)


def note(spec: LaunchSpec) -> None:
    """Called by ``fusedres.ops`` for every fused step while a trace is active."""
    if _active:
        _active[-1].append(spec)


@contextlib.contextmanager
def record_launches():
    """Collect the LaunchSpec of every fused step run inside the block (in call order)."""
    specs = []
    _active.append(specs)
    try:
        yield specs
    finally:
        _active.pop()


def trace_launches(model, batch=1, size=(224, 224), dtype=torch.float16):
    """The LaunchSpecs of one eval-mode forward of ``model`` (a FusedResNet), run on a meta
    copy of it; ``model`` itself is not touched."""
    meta = copy.deepcopy(model).to(device="meta", dtype=dtype).eval()
    x = torch.empty(batch, 3, *size, device="meta", dtype=dtype)
    with torch.no_grad(), record_launches() as specs:
        meta(x)
    return specs


def unique(specs):
    """Distinct specs, first occurrence order."""
    return list(dict.fromkeys(specs))
