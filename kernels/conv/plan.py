"""``LaunchPlan``: one ``conv_bn_act`` launch, replayed for new activations in a few
microseconds.

A normal launch's host work (checks, config choice, Triton's binder and cache key) costs
about ten times a plan's (docs/benchmarks.md), more than the GPU work of a batch-1 ResNet
layer.  A plan is built
from a normal launch (``launcher.conv_bn_act_with_plan``) and keeps what that launch decided:
the compiled kernel(s) Triton's JIT returned, their grids, the weights and every scalar
argument, in the order the JIT passed them.  A call checks that the new activations are
launched exactly like the old ones (guards), allocates the output and calls the compiled
kernel's launcher directly: twice for split-K (partial sums, then the epilogue kernel).

Guards (any miss returns None, and the caller takes the normal path, never a wrong launch):
shape, strides, dtype and device of the input, residual and shortcut input; their 16-byte
alignment (Triton specialises pointers on it, and TMA needs it); the current device and
stream; no Triton launch hooks set (a profiler's hooks need the metadata the JIT builds;
without any, the plan passes None where the JIT passes empty hooks and their metadata).
"""
import torch
import triton
from triton.runtime import driver

from ..layout import pad_channels
from ..runtime import ensure_allocator

# The Triton releases whose JIT launches with the protocol a plan reproduces (CompiledKernel
# .run's arguments: grid, stream, function, packed metadata, launch metadata, enter/exit
# hooks, then every kernel argument, constexprs included; earlier releases passed the
# non-constexpr ones only).  The tests compare a plan's calls with the JIT's on the
# installed Triton (3.8 in CI); 3.6 and 3.7's JIT.run makes the same call.
SUPPORTED_TRITON = ((3, 6), (3, 7), (3, 8))


def supported_triton() -> bool:
    """Whether this Triton launches with the protocol a plan reproduces."""
    return tuple(int(p) for p in triton.__version__.split(".")[:2]) in SUPPORTED_TRITON


# Where Triton keeps its launch hooks: knobs.runtime (3.4+), else CompiledKernel.
_HOOKS = getattr(getattr(triton, "knobs", None), "runtime", None) or triton.compiler.CompiledKernel


def launch_hooks_set() -> bool:
    """Whether Triton's launch enter/exit hooks (a profiler's) are set: empty hook chains
    (Triton 3.8) and None (earlier) are not."""
    enter, leave = _HOOKS.launch_enter_hook, _HOOKS.launch_exit_hook
    return ((enter is not None and getattr(enter, "calls", True))
            or (leave is not None and getattr(leave, "calls", True)))


class Run:
    """One compiled kernel's launch: its launcher, grid, and the arguments after the seven
    tensors that change per call (x, weight, bias, xs, ws, residual, out), all constant."""

    __slots__ = ("launch", "function", "metadata", "grid", "tail")

    def __init__(self, compiled, grid, tail):
        self.launch = compiled.run
        self.function = compiled.function
        self.metadata = compiled.packed_metadata
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.tail = tuple(tail)


class Signature:
    """What a guarded activation must look like: shape, strides, dtype, device number (-1 on
    the CPU); and 16-byte aligned."""

    __slots__ = ("shape", "stride", "dtype", "device")

    def __init__(self, t):
        self.shape, self.stride, self.dtype, self.device = (t.shape, t.stride(), t.dtype,
                                                             t.get_device())

    def matches(self, t) -> bool:
        return (t.shape == self.shape and t.dtype is self.dtype and t.stride() == self.stride
                and not t.data_ptr() & 15 and t.get_device() == self.device)


class LaunchPlan:
    """Replays one ``conv_bn_act`` launch; see the module docstring.  Thread-safe (a call
    changes nothing).  ``folded`` is whatever the caller built the weights from (the plan
    holds it so the caller can tell its plans from an older fold's)."""

    def __init__(self, *, x, residual, xs, device, stream, weight, bias, ws, out_shape,
                 out_stride, pad, convert, runs, split, tma, folded=None):
        self.x_sig = Signature(x)
        self.residual_sig = None if residual is None else Signature(residual)
        self.xs_sig = None if xs is None else Signature(xs)
        self.device = device          # torch.device of every tensor
        self.dtype = weight.dtype
        self.device_index = driver.active.get_current_device()
        self.stream = stream
        self.weight, self.bias = weight, bias  # as launched (the stem's weight padded)
        self.ws = ws  # the shortcut weight; without a shortcut, the unpadded weight
        self.out_shape, self.out_stride = out_shape, out_stride
        self.pad = pad                # the stem's padded channel count, or 0
        self.convert = convert        # x arrives in another memory format: make it NHWC
        self.runs = runs              # [Run] (one), or [conv Run, epilogue Run] for split-K
        self.split = split            # None, or (split_k, m, c_out): split-K's workspace
        self.tma = tma
        self.folded = folded

    def __call__(self, x, residual=None, xs=None):
        """The output (channels_last, like the normal launch's), or None when a guard
        misses."""
        sig = self.x_sig  # Signature.matches, inlined: this runs once per launch
        if (x.shape != sig.shape or x.dtype is not sig.dtype or x.stride() != sig.stride
                or x.data_ptr() & 15 or x.get_device() != sig.device):
            return None
        if residual is None:
            if self.residual_sig is not None:
                return None
        elif self.residual_sig is None or not self.residual_sig.matches(residual):
            return None
        if xs is None:
            if self.xs_sig is not None:
                return None
        elif self.xs_sig is None or not self.xs_sig.matches(xs):
            return None
        active = driver.active
        device_index = active.get_current_device()
        if device_index != self.device_index:
            return None
        stream = active.get_current_stream(device_index)
        if stream != self.stream:
            return None
        if launch_hooks_set():
            return None
        if self.tma:
            ensure_allocator()  # per thread: Triton keeps the allocator in a ContextVar
        out = torch.empty_strided(self.out_shape, self.out_stride, dtype=self.dtype,
                                  device=self.device)
        if self.pad:
            x = pad_channels(x, self.pad)
        elif self.convert:
            x = x.contiguous(memory_format=torch.channels_last)
        if xs is None:
            xs = self.ws  # never read: the normal launch passes the unpadded weight twice
        first = self.runs[0]
        target = out
        if self.split is not None:
            target = torch.empty(self.split, dtype=torch.float32, device=self.device)
        g0, g1, g2 = first.grid
        first.launch(g0, g1, g2, stream, first.function, first.metadata, None, None, None,
                     x, self.weight, self.bias, xs, self.ws,
                     out if residual is None else residual, target, *first.tail)
        if self.split is not None:
            second = self.runs[1]
            g0, g1, g2 = second.grid
            second.launch(g0, g1, g2, stream, second.function, second.metadata, None, None,
                          None, target, self.bias, out if residual is None else residual, out,
                          *second.tail)
        return out

