"""BatchNorm folding and the cache of folded weights that can never go stale."""
import collections
import contextlib
import operator
import threading
from typing import NamedTuple, Optional

import torch
from torch import nn

from .kernels import pack_weight
from .supported import check_foldable


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """Fold eval-mode ``bn(conv(x))`` into one convolution, computed in float32.

    Returns ``(weight, bias)`` with ``weight = W * s`` per output channel and
    ``bias = beta + (conv_bias - mean) * s``, ``s = gamma / sqrt(var + eps)``.  Folding in
    half precision loses accuracy, so the caller casts only the result.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm2d without running statistics "
                         "(track_running_stats=False); it normalises with batch statistics")
    with torch.no_grad():
        w = conv.weight.float()
        mean, var = bn.running_mean.float(), bn.running_var.float()
        gamma = bn.weight.float() if bn.weight is not None else torch.ones_like(mean)
        beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(mean)
        scale = gamma * torch.rsqrt(var + bn.eps)
        conv_bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(mean)
        return w * scale.view(-1, 1, 1, 1), beta + (conv_bias - mean) * scale


class Folded(NamedTuple):
    """Weights of one fused launch in one dtype and layout.

    ``weight``/``shortcut_weight`` are packed ``[KH*KW*C_in/groups, C_out]`` for the Triton
    kernel, or plain ``[C_out, C_in/groups, KH, KW]`` for the torch path.  ``bias`` is float32
    for the kernel (its epilogue works in float32) and in the activation dtype for torch.
    ``bias`` includes the shortcut's folded bias.
    """
    weight: torch.Tensor
    bias: torch.Tensor
    shortcut_weight: Optional[torch.Tensor]


_DATA_PTR = torch.Tensor.data_ptr
_VERSION = operator.attrgetter("_version")


class TensorWatch:
    """Tells whether any of a fixed set of tensors may hold other values than when watched.

    The one staleness rule of the library, used by ``FoldCache`` and ``CUDAGraphRunner``.  Per
    tensor it compares, in one pass each:

      * the version counter, bumped by every in-place edit (``load_state_dict`` included);
      * the data pointer, which ``.data = ...`` and ``module.to()`` / ``.half()`` / ``.cuda()``
        move while keeping the tensor object and its version.  The watch holds an alias of
        every watched storage, so a freed address cannot come back holding new values; a
        change of dtype, device or size needs a new storage, so the pointer covers those.

    Inference tensors (made under ``torch.inference_mode()``, e.g. a model built or loaded
    there) have no version counter.  Outside inference mode they cannot be edited in place at
    all; inside it their in-place edits, ``load_state_dict`` included, are NOT noticed:
    checking their values on every call would cost as much as folding again.  Replace such
    tensors instead (``load_state_dict(..., assign=True)``, or a new module), or call
    ``forget_folds(model)`` (``CUDAGraphRunner.invalidate()`` under CUDA graphs) after the
    edit.
    """

    def __init__(self, tensors):
        self.tensors = tuple(tensors)
        self._storages = tuple(t.detach() for t in self.tensors)
        self._versioned = tuple(t for t in self.tensors if not t.is_inference())
        # Lists: built and compared a little faster than tuples (one call per forward reads
        # every parameter and buffer of a model).
        self._pointers = list(map(_DATA_PTR, self.tensors))
        self._versions = list(map(_VERSION, self._versioned))

    def watches(self, tensors) -> bool:
        """Whether ``tensors`` are the watched tensor objects, in order (not replaced)."""
        return len(tensors) == len(self.tensors) and all(map(operator.is_, tensors, self.tensors))

    def changed(self) -> bool:
        # Pointers first: a tensor whose data was swapped may have no version to read.
        return (list(map(_DATA_PTR, self.tensors)) != self._pointers
                or list(map(_VERSION, self._versioned)) != self._versions)


class _Snapshot(NamedTuple):
    """What a FoldCache knows at one moment; never modified, only replaced as a whole."""
    watch: TensorWatch
    eps: tuple
    variants: dict  # (dtype, device, packed) -> Folded


class _Loads:
    """``load_state_dict`` calls on fused modules in progress, in any thread.

    ``load_state_dict`` copies tensor after tensor, so while it runs the module holds a mix of
    old and new weights.  A fold waits until no other thread is loading and is kept only if
    no load started or ended while it read its sources (``generation`` unchanged), so no
    launch ever folds such a mix.  The loading thread itself does not wait (a load hook that
    runs the model would otherwise wait for itself forever); what it folds mid-load is
    refolded after the load, whose copies moved the versions.  Global rather than per model:
    a load is rare and short, and a per-model record would have to survive
    ``copy.deepcopy`` and pickling.
    """

    condition = threading.Condition()
    loading = collections.Counter()  # thread id -> loads in progress (nested ones count)
    generation = 0

    @classmethod
    def wait_until_idle(cls) -> int:
        """Waits until no other thread is loading; returns the generation to compare after."""
        me = threading.get_ident()
        with cls.condition:
            cls.condition.wait_for(lambda: cls.loading.keys() <= {me})
            return cls.generation


@contextlib.contextmanager
def loading():
    """Marks a ``load_state_dict`` in progress in this thread (see ``_Loads``)."""
    me = threading.get_ident()
    with _Loads.condition:
        _Loads.loading[me] += 1
        _Loads.generation += 1
    try:
        yield
    finally:
        with _Loads.condition:
            _Loads.loading[me] -= 1
            if not _Loads.loading[me]:
                del _Loads.loading[me]
            _Loads.generation += 1
            _Loads.condition.notify_all()


def loads_generation() -> int:
    """Changes whenever a ``load_state_dict`` of a fused module starts or ends; a cheap
    witness of weight loads for ``CUDAGraphRunner(check="cheap")``."""
    return _Loads.generation


class LoadsAtomically:
    """Mixin for fused modules: their ``load_state_dict`` is never seen half done by a fold
    in another thread (see ``_Loads``).  Loading into a submodule directly
    (``fused.conv.load_state_dict(...)``) bypasses it."""

    def load_state_dict(self, *args, **kwargs):
        with loading():
            return super().load_state_dict(*args, **kwargs)


class FoldCache:
    """Folded weights of one fused launch, rebuilt whenever their sources change.

    ``get`` takes the modules on every call rather than holding them, so replacing a
    submodule (``block.conv1 = ...``) can never leave a fused model pointing at the old one.
    The cache watches every tensor it folded (``TensorWatch``: replaced, edited in place,
    moved), plus each BatchNorm's ``eps`` and ``num_batches_tracked`` (the one tensor whose
    version a train-mode forward bumps when it updates the running statistics).  Any
    difference drops every cached variant.

    Thread-safe.  Everything lives in one immutable ``_Snapshot`` that is replaced, never
    changed, so the common call (sources unchanged, variant present) reads one attribute and
    takes no lock; building a fold takes the cache's lock, so threads that find the cache
    stale together fold once.  A fold records the sources' versions *before* reading them
    and is retried if they changed while it read them (or a ``load_state_dict`` ran, see
    ``_Loads``), so a concurrent edit can neither slip into a launch half-applied nor leave
    a stale fold looking current.  (An in-place edit still running in another thread,
    unsynchronised, is a data race on the tensor itself, as in eager PyTorch; the call
    after it returns sees it.)  At most one variant per (dtype, device, layout) is held; a
    rebuild drops the old tensors with the old snapshot.

    It also keeps the launch site's launch plans (``add_plan``), which hold folded tensors
    and go with them.
    """

    MAX_PLANS = 8  # input shapes per launch site (batch sizes a server sees, typically)

    def __init__(self):
        self._lock = threading.Lock()
        self._snapshot = None
        # Input shape -> LaunchPlan (kernels/conv/plan.py) built from a fold of the current
        # snapshot; replaced as a whole (copy on write), emptied with every new snapshot.
        # Callers only read it (``replay``, ``fusedres.plans.replay_blocks``).
        self.plans = {}

    def get(self, pairs, dtype: torch.dtype, device: torch.device, packed: bool) -> Folded:
        """``pairs``: ``[(conv, bn)]``, or ``[(conv, bn), (shortcut_conv, shortcut_bn)]``."""
        # num_batches_tracked: a train-mode forward updates the running statistics without
        # bumping their version counters, only this counter's.
        sources = [t for conv, bn in pairs
                   for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                             bn.running_var, bn.num_batches_tracked) if t is not None]
        eps = tuple(bn.eps for _, bn in pairs)
        key = (dtype, device, packed)
        snapshot = self._snapshot  # one read: the snapshot below cannot change under us
        if (snapshot is not None and eps == snapshot.eps and snapshot.watch.watches(sources)
                and not snapshot.watch.changed()):  # _current, inlined on the hot path
            folded = snapshot.variants.get(key)
            if folded is not None:
                return folded
        with self._lock:
            snapshot = self._snapshot  # another thread may have folded meanwhile
            if snapshot is not None and not self._current(snapshot, sources, eps):
                snapshot = None
            if snapshot is not None and key in snapshot.variants:
                return snapshot.variants[key]
            if snapshot is None:
                for conv, bn in pairs:
                    check_foldable(conv, bn)
            while True:
                generation = _Loads.wait_until_idle()
                # The versions are read before folding: an edit made meanwhile shows as a
                # change below, so the fold is retried and never cached as current.
                if snapshot is not None and self._current(snapshot, sources, eps):
                    watch, variants = snapshot.watch, snapshot.variants
                else:
                    watch, variants = TensorWatch(sources), {}
                folded = build_folded(pairs, dtype, device, packed)
                if _Loads.generation == generation and not watch.changed():
                    break
            if watch is not getattr(self._snapshot, "watch", None):
                self.plans = {}  # built from the sources of before
            self._snapshot = _Snapshot(watch, eps, {**variants, key: folded})
            return folded

    def plan(self, shape, folded):
        """The launch plan for inputs of ``shape`` built from ``folded`` (what ``get`` just
        returned), or None."""
        plan = self.plans.get(shape)
        return plan if plan is not None and plan.folded is folded else None

    def replay(self, x, residual=None, xs=None):
        """Run the plan for ``x``'s shape without checking the sources: only for callers that
        checked the whole model's tensors since the plans were made (``fusedres.plans``).
        None when there is no plan or one of its guards misses."""
        plan = self.plans.get(x.shape)
        return None if plan is None else plan(x, residual, xs)

    def add_plan(self, shape, plan) -> None:
        """Keep ``plan`` (its ``folded`` from ``get``) for inputs of ``shape``, unless its
        fold is no longer current.  At most ``MAX_PLANS`` shapes are kept."""
        with self._lock:
            snapshot = self._snapshot
            if snapshot is None or not any(f is plan.folded for f in snapshot.variants.values()):
                return
            plans = self.plans if len(self.plans) < self.MAX_PLANS else {}
            self.plans = {**plans, shape: plan}

    def forget_plans(self) -> None:
        """Drop the launch plans (the folds stay)."""
        self.plans = {}

    @staticmethod
    def _current(snapshot, sources, eps) -> bool:
        return (eps == snapshot.eps and snapshot.watch.watches(sources)
                and not snapshot.watch.changed())

    def clear(self) -> None:
        """Forget everything; the next ``get`` folds again.  Waits for a fold in progress,
        which may have read the values from before the caller's edit."""
        with self._lock:
            self._snapshot = None
            self.plans = {}

    def __getstate__(self):
        # Pickled, deep-copied or saved empty: folds and watches describe tensors of this
        # process, and the lock cannot be pickled; the copy folds again on its first call.
        return {}

    def __setstate__(self, state):
        self.__init__()


def forget_folds(model: nn.Module) -> None:
    """Make every fused module in ``model`` fold its weights again on its next call.

    Only needed after an edit that ``TensorWatch`` cannot see: an in-place edit of inference
    tensors inside ``torch.inference_mode()``.
    """
    for cache in fold_caches(model.modules()):
        cache.clear()


def fold_caches(modules):
    """Every ``FoldCache`` of ``modules``: fused modules keep theirs as plain attributes, one
    FoldCache or a list of them."""
    for module in modules:
        for value in vars(module).values():
            for cache in (value if isinstance(value, list) else (value,)):
                if isinstance(cache, FoldCache):
                    yield cache


def build_folded(pairs, dtype, device, packed) -> Folded:
    weight, bias = fold_bn(*pairs[0])
    shortcut_weight = None
    if len(pairs) > 1:
        shortcut_weight, shortcut_bias = fold_bn(*pairs[1])
        bias = bias + shortcut_bias
    with torch.no_grad():
        if packed:
            cast = (lambda w: pack_weight(w, dtype).to(device))
            bias = bias.to(device)
        else:
            # channels_last like the activations, or every F.conv2d reorders its weight.
            cast = (lambda w: w.to(device=device, dtype=dtype)
                    .contiguous(memory_format=torch.channels_last))
            bias = bias.to(device=device, dtype=dtype)
        return Folded(cast(weight), bias, None if shortcut_weight is None else cast(shortcut_weight))
