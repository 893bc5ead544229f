"""Which fused launches a model makes: the ``ConvGeometry`` of every ``conv_bn_act`` call.

Used by ``fusedres inspect`` (compile every specialisation) and the layer benchmarks.
Tracing runs the model on the ``meta`` device, so it costs no memory or compute even for
batch 256 at 224x224.
"""
import contextlib
import copy

import torch

from .kernels import ConvGeometry

_active = []  # stack of lists collecting ConvGeometries


def active() -> bool:
    return bool(_active)


def note(geometry: ConvGeometry) -> None:
    """Called by ``fusedres.ops`` for every fused step while a trace is active."""
    if _active:
        _active[-1].append(geometry)


@contextlib.contextmanager
def record_geometries():
    """Collect the ConvGeometry of every fused step run inside the block (in call order)."""
    geometries = []
    _active.append(geometries)
    try:
        yield geometries
    finally:
        _active.pop()


def trace_launches(model, batch=1, size=(224, 224), dtype=torch.float16):
    """The ConvGeometries of one eval-mode forward of ``model`` (a FusedResNet), run on a meta
    copy of it; ``model`` itself is not touched."""
    meta = copy.deepcopy(model).to(device="meta", dtype=dtype).eval()
    x = torch.empty(batch, 3, *size, device="meta", dtype=dtype)
    with torch.no_grad(), record_geometries() as geometries:
        meta(x)
    return geometries


def unique(geometries):
    """Distinct geometries, first occurrence order."""
    return list(dict.fromkeys(geometries))
