"""A stand-in GPU: fusedres' CUDA launch path run on CPU tensors, down to Triton's
launcher, launching nothing.  It measures host time per launch and checks launch arguments
on a machine without a GPU (benchmarks/test_host_overhead.py, tests/test_plans.py).

    with standin_gpu(choose="plain") as gpu:      # not under TRITON_INTERPRET
        model(x)                                  # x: a CPU tensor; nothing is computed
        gpu.calls                                 # with record=True: every kernel call

Inside the block:
  * Triton's driver is a stand-in naming an sm_90 target (``aot.TargetDriver``; its current
    device and stream are settable), and the JIT's compiler returns ``StandInKernel``s: the
    binder, specialisation, cache key and in-memory cache are Triton's own, only the
    compile and the C launch are replaced.  A stand-in kernel's launcher records its call
    (``record=True``) or does nothing.
  * CPU tensors take the CUDA path: ``ops`` launches Triton kernels and launch plans for
    them, ``runtime.arch``/``sm_count`` say sm_90 with ``sms`` SMs.
  * The tuner picks without timing (``pick``): ``choose="plain"`` the first candidate
    without split-K, TMA or channel padding; ``"split-k-tma"`` the first with split-K or TMA
    where a geometry has one (else as plain); ``"variants"`` the first with any of them
    (split-K, TMA, the stem's padded strips) where a geometry has one.

What it cannot show: GPU time, and the launcher's own C cost (~1-2 us per launch on a GPU
host).  Activations are never written: outputs hold whatever ``torch.empty`` returned.
"""
import contextlib
from unittest import mock

import torch

from . import aot, kernels, ops
from .kernels import runtime
from .kernels.conv import launcher

CHOICES = ("plain", "split-k-tma", "variants")


class StandInKernel:
    """What the JIT's compile returns inside ``standin_gpu``: the attributes a launch reads,
    and a launcher that records or ignores its call."""

    packed_metadata = ()

    def __init__(self, name, options, calls):
        self.name = name
        self.options = options
        self.function = id(self)
        self._calls = calls

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        if self._calls is not None:
            self._calls.append((self, args))


class StandInDriver(aot.TargetDriver):
    """``aot.TargetDriver`` with a settable current device and stream."""

    def __init__(self, arch):
        super().__init__(arch)
        self.device = 0
        self.stream = 0

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return self.stream


class StandInGPU:
    """What ``standin_gpu`` yields: the driver (set ``.driver.stream`` / ``.driver.device``)
    and, with ``record=True``, ``calls``: ``(StandInKernel, launcher arguments)`` per call."""

    def __init__(self, driver, calls):
        self.driver = driver
        self.calls = calls


def pick(choose):
    """The tuner's pick for ``choose`` (see the module docstring), without timing."""
    def variant(config):
        return config.split_k > 1 or config.tma or config.pad_c

    def pick(key, candidates, run, device):
        if choose == "variants":
            return next((c for c in candidates if variant(c)), candidates[0])
        if choose == "split-k-tma":
            special = next((c for c in candidates if c.split_k > 1 or c.tma), None)
            if special is not None:
                return special
        return next((c for c in candidates if not variant(c)), candidates[0])
    return pick


@contextlib.contextmanager
def standin_gpu(choose="plain", *, arch=90, sms=132, record=False):
    if kernels.INTERPRETED:
        raise RuntimeError("the stand-in GPU needs Triton's JIT: unset TRITON_INTERPRET")
    if choose not in CHOICES:
        raise ValueError(f"choose must be one of {CHOICES}, got {choose!r}")
    calls = [] if record else None
    driver = StandInDriver(arch)

    def compile(src, target=None, options=None, **_):
        return StandInKernel(src.fn.__name__, options, calls)

    on_cpu = (lambda x: x.device.type == "cpu")
    with contextlib.ExitStack() as stack:
        stack.enter_context(aot.target_driver(arch, driver))
        for jit in launcher.JIT_FUNCTIONS:
            for device in (0, 1):  # binders for the stand-in target; each sets jit.compile
                jit.device_caches[device]
            stack.enter_context(mock.patch.object(jit, "compile", compile))
        stack.enter_context(mock.patch.object(ops, "uses_triton", on_cpu))
        stack.enter_context(mock.patch.object(
            ops, "plans_launches", lambda x: ops.LAUNCH_PLANS and on_cpu(x)))
        stack.enter_context(mock.patch.object(runtime, "arch", lambda device: arch))
        stack.enter_context(mock.patch.object(runtime, "sm_count", lambda device: sms))
        stack.enter_context(mock.patch.object(launcher.TUNER, "pick", pick(choose)))
        yield StandInGPU(driver, calls)


class Allocates(torch.nn.Module):
    """Stands in for a module that is no fused launch: returns an empty tensor shaped and
    strided as that module's output, so timing a forward times the fused launches (and these
    allocations, ~1 us each)."""

    def __init__(self, shape, stride, dtype):
        super().__init__()
        self.shape, self.stride, self.dtype = shape, stride, dtype

    def forward(self, x):
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=x.device)


def launches_only(model, x, names=("maxpool", "avgpool", "fc")):
    """Replace ``model``'s children ``names`` by ``Allocates`` of their outputs for ``x``
    (found by one forward; call it inside ``standin_gpu`` or on the GPU)."""
    shapes = {}

    def note(name):
        def hook(module, args, out):
            shapes[name] = (out.shape, out.stride(), out.dtype)  # returns None: output kept
        return hook

    hooks = [getattr(model, name).register_forward_hook(note(name)) for name in names]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    for name in names:
        setattr(model, name, Allocates(*shapes[name]))
    return model
