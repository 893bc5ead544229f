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
A caller that runs plans back to back may skip the guards that ``LaunchPlan.follows``
proves from the previous plan (``fusedres.plans.replay_blocks``): a plan knows the
signature of every output it returns.
"""
import torch
import triton
from torch._C._dynamo import guards as _guards
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

    def head(self, stream):
        """The launcher's arguments before the kernel's: grid, stream, function, packed
        metadata, then None for the launch metadata and the enter/exit hooks."""
        return (*self.grid, stream, self.function, self.metadata, None, None, None)


class Signature:
    """What a guarded activation must look like: shape, strides, dtype, device number (-1 on
    the CPU); and 16-byte aligned."""

    __slots__ = ("shape", "stride", "dtype", "device")

    def __init__(self, shape, stride, dtype, device):
        self.shape, self.stride, self.dtype, self.device = shape, stride, dtype, device

    @classmethod
    def of(cls, t):
        return cls(t.shape, t.stride(), t.dtype, t.get_device())

    def matches(self, t) -> bool:
        return (t.shape == self.shape and t.dtype is self.dtype and t.stride() == self.stride
                and not t.data_ptr() & 15 and t.get_device() == self.device)

    def same(self, other) -> bool:
        """Whether every tensor matching ``other`` matches this too."""
        return (self.shape == other.shape and self.stride == other.stride
                and self.dtype is other.dtype and self.device == other.device)


def allocator(device: torch.device):
    """``empty(shape, stride, dtype)`` on ``device``, for a plan made there: its guards prove
    the current device is the one of when it was made.  torch.empty_strided goes through the
    dispatcher, a large part of a replay's host time (docs/benchmarks.md); where torch has
    them, the allocators Inductor's generated code calls make the same tensor directly, on
    the current device, so they serve where that is ``device`` and they work (a probe
    tells)."""
    fast = getattr(_guards, f"_empty_strided_{device.type}", None)
    if fast is not None:
        try:
            probe = fast((0,), (1,), torch.float32)
        except RuntimeError:  # e.g. a torch built without that device's allocator
            probe = None
        if probe is not None and probe.device == device:
            return fast
    return lambda shape, stride, dtype: torch.empty_strided(shape, stride, dtype=dtype,
                                                            device=device)


class LaunchPlan:
    """Replays one ``conv_bn_act`` launch; see the module docstring.  Thread-safe (a call
    changes nothing but ``follows``'s memo, replaced whole).  ``folded`` is whatever the
    caller built the weights from (the plan holds it so the caller can tell its plans from
    an older fold's)."""

    def __init__(self, *, x, residual, xs, device, stream, weight, bias, ws, out_shape,
                 out_stride, pad, convert, runs, split, tma, folded=None):
        self.x_sig = Signature.of(x)
        self.residual_sig = None if residual is None else Signature.of(residual)
        self.xs_sig = None if xs is None else Signature.of(xs)
        self.device = device          # torch.device of every tensor
        self.dtype = weight.dtype
        self.device_index = driver.active.get_current_device()
        self.stream = stream
        self.weight, self.bias = weight, bias  # as launched (the stem's weight padded)
        self.ws = ws  # the shortcut weight; without a shortcut, the unpadded weight
        # Plain tuples: the direct allocators take nothing else.
        self.out_shape, self.out_stride = tuple(out_shape), tuple(out_stride)
        # Every output's signature (``follows``); on x's device, like every tensor.
        self.out_sig = Signature(self.out_shape, self.out_stride, self.dtype,
                                 self.x_sig.device)
        self.pad = pad                # the stem's padded channel count, or 0
        self.convert = convert        # x arrives in another memory format: make it NHWC
        # None, or (split_k, m, c_out): split-K's workspace
        self.split = None if split is None else tuple(split)
        self.tma = tma
        self.folded = folded
        self.empty = allocator(device)
        # ``runs``: [Run] (one), or [conv Run, epilogue Run] for split-K.  Per run: the
        # launcher and its constant arguments before and after the kernel's tensors (the
        # stream is constant too: a call on another one misses a guard).
        self._launches = [(run.launch, run.head(stream), run.tail) for run in runs]
        if split is not None:
            self._split_stride = (split[1] * split[2], split[2], 1)
        self._chain = (None, None)  # the (previous, given) ``follows`` vouched for last

    def __call__(self, x, residual=None, xs=None):
        """The output (channels_last, like the normal launch's), or None when a guard
        misses."""
        sig = self.x_sig  # Signature.matches, inlined here and below: once per launch
        if (x.shape != sig.shape or x.dtype is not sig.dtype or x.stride() != sig.stride
                or x.data_ptr() & 15 or x.get_device() != sig.device):
            return None
        sig = self.residual_sig
        if residual is None:
            if sig is not None:
                return None
        elif (sig is None or residual.shape != sig.shape or residual.dtype is not sig.dtype
              or residual.stride() != sig.stride or residual.data_ptr() & 15
              or residual.get_device() != sig.device):
            return None
        if xs is None:
            if self.xs_sig is not None:
                return None
        elif self.xs_sig is None or not self.xs_sig.matches(xs):
            return None
        active = driver.active
        device_index = active.get_current_device()
        if (device_index != self.device_index
                or active.get_current_stream(device_index) != self.stream
                or launch_hooks_set()):
            return None
        return self.launch(x, residual, xs)

    def follows(self, previous, given, residual=None, xs=None) -> bool:
        """Whether this plan's guards provably pass for a call on the output that
        ``previous`` just returned, with ``residual`` / ``xs`` None or a tensor known to
        match ``given`` (a Signature: the ``x_sig`` of a plan whose guards it passed, or the
        ``out_sig`` of the plan that returned it), in the same thread, nothing but replays
        having run since a guarded call began the chain: then ``launch`` may skip them.

        A plan's output matches its ``out_sig`` and is 16-byte aligned (torch's allocators
        align to 64 bytes or more); the current device, stream and launch hooks are as the
        guarded call found them, which each link checks against its predecessor's.  Costs
        two identity checks once the pair was vouched for (it is remembered)."""
        if (residual is None) is not (self.residual_sig is None) or (
                (xs is None) is not (self.xs_sig is None)):
            return False
        chain = self._chain
        if chain[0] is previous and chain[1] is given:
            return True
        if not (self.x_sig.same(previous.out_sig) and previous.device == self.device
                and self.device_index == previous.device_index
                and self.stream == previous.stream
                and all(sig is None or sig.same(given)
                        for sig in (self.residual_sig, self.xs_sig))):
            return False
        self._chain = (previous, given)  # one assignment: a racing thread sees a whole pair
        return True

    def launch(self, x, residual=None, xs=None):
        """The launch without its guards: for callers that proved them (``follows``)."""
        if self.tma:
            ensure_allocator()  # per thread: Triton keeps the allocator in a ContextVar
        out = self.empty(self.out_shape, self.out_stride, self.dtype)
        if self.pad:
            x = pad_channels(x, self.pad)
        elif self.convert:
            x = x.contiguous(memory_format=torch.channels_last)
        if xs is None:
            xs = self.ws  # never read: the normal launch passes the unpadded weight twice
        if residual is None:
            residual = out  # never read (HAS_RESIDUAL off), as in the normal launch
        if self.split is None:
            launch, head, tail = self._launches[0]
            launch(*head, x, self.weight, self.bias, xs, self.ws, residual, out, *tail)
            return out
        part = self.empty(self.split, self._split_stride, torch.float32)
        (conv, conv_head, conv_tail), (reduce, reduce_head, reduce_tail) = self._launches
        conv(*conv_head, x, self.weight, self.bias, xs, self.ws, residual, part, *conv_tail)
        reduce(*reduce_head, part, self.bias, residual, out, *reduce_tail)
        return out
