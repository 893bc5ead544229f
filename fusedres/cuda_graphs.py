"""Batch-1 latency: replay a fused model through CUDA graphs.

At small batches a ResNet is launch-bound: a few microseconds of CPU work per kernel add up
to more than the GPU work.  A CUDA graph records every launch of one forward once and replays
them with a single call.

    runner = fusedres.CUDAGraphRunner(fused_model)   # eval mode, CUDA
    logits = runner(x)                               # captures on the first call per shape

One graph per input (shape, dtype, device, autocast state): the first call of each warms up
(the autotuner picks its configs outside the capture), then captures; later calls copy the
input into the graph's static input and replay.  Each graph holds its own GPU memory (its
static input, output and activations), so the runner keeps at most ``max_graphs`` of them
and drops the least recently used.  With ``buckets`` (batch sizes, e.g. ``(1, 2, 4, 8, 16,
32, 64)``) a batch is padded up to the next bucket and the result sliced, so a server with
varying batch sizes captures a handful of graphs instead of one per size.

Graphs are re-captured whenever any parameter, buffer or BatchNorm ``eps`` of the model
changed (edited in place, replaced, moved), so a replay never uses stale folded weights; the
check costs three reads per tensor (``ModelWatch``: which tensor, its data pointer and
version; about 25 us per call on ResNet-18, 63 us on ResNet-50 on a 2-core CPU).  In-place
edits of inference tensors inside ``torch.inference_mode()`` cannot be seen (see
``fusedres.folding.TensorWatch``) and need ``runner.invalidate()``.
``check="cheap"`` trades the per-tensor check for two counter reads: it still sees replaced
parts and ``load_state_dict`` on a fused module, but the caller promises to call
``invalidate()`` after any other change (in-place edits, ``.to()``, ``eps``).
"""
import collections
import threading
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn
from .folding import forget_folds
from .watch import ModelWatch


class _Captured(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    static_input: torch.Tensor
    static_output: torch.Tensor


class LRU:
    """At most ``capacity`` entries; ``get`` marks an entry as used, ``put`` evicts the
    least recently used ones beyond the capacity (dropping the last reference to them)."""

    def __init__(self, capacity: int):
        if not (isinstance(capacity, int) and capacity >= 1):
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self._entries = collections.OrderedDict()

    def get(self, key):
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self):
        return len(self._entries)


def bucket_size(batch: int, buckets: Optional[Sequence[int]]) -> int:
    """The batch size to run ``batch`` samples at: the smallest bucket that holds them, or
    ``batch`` itself without buckets or beyond the largest."""
    if buckets:
        for size in buckets:
            if size >= batch:
                return size
    return batch


class CUDAGraphRunner:
    """Callable replaying ``model``'s eval-mode forward through CUDA graphs (see module doc).

    ``max_graphs``: how many captured graphs are kept (least recently used dropped first);
    small by default because each holds the activations of a whole forward at its shape.
    ``buckets``: optional increasing batch sizes to pad each batch up to (see module doc);
    padding rows are zeros and their outputs are dropped.  ``check``: ``"full"`` (default)
    re-captures after any change to the model; ``"cheap"`` only after replaced parts and
    fused ``load_state_dict``, and relies on ``invalidate()`` for the rest.

    Returns a fresh tensor each call (a copy of the graph's static output, which the next
    replay overwrites).  Calls from several threads are serialised (they would share the
    static input).  In train mode it simply calls the model.
    """

    def __init__(self, model: nn.Module, warmup: int = 2, *, max_graphs: int = 4,
                 buckets: Optional[Sequence[int]] = None, check: str = "full"):
        if check not in ("full", "cheap"):
            raise ValueError(f"check must be 'full' or 'cheap', got {check!r}")
        if buckets is not None:
            buckets = tuple(buckets)
            if (not buckets or not all(isinstance(b, int) and b >= 1 for b in buckets)
                    or list(buckets) != sorted(set(buckets))):
                raise ValueError("buckets must be strictly increasing positive batch sizes, "
                                 f"got {buckets!r}")
        self.model = model
        self.warmup = warmup
        self.buckets = buckets
        self.check = check
        self._graphs = LRU(max_graphs)
        self._watch = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Drop every captured graph and the model's folded weights; the next call folds and
        captures again.  Needed only after the changes the module doc lists as unseen (and,
        with ``check="cheap"``, after any edit of the model's tensors)."""
        with self._lock:
            self._graphs.clear()
            self._watch = None
            forget_folds(self.model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:
            return self.model(x)
        self._check_input(x)
        with self._lock:
            if self._watch is None or self._watch.changed():
                self._graphs.clear()
                self._watch = ModelWatch(self.model, full=self.check == "full")
            batch = x.shape[0]
            size = bucket_size(batch, self.buckets)
            autocast = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda")
            key = ((size, *x.shape[1:]), x.dtype, x.device, autocast)
            captured = self._graphs.get(key)
            if captured is None:
                captured = self._capture(_padded(x, size))
                self._graphs.put(key, captured)
            else:
                captured.static_input[:batch].copy_(x)
                if size > batch:
                    captured.static_input[batch:].zero_()
            captured.graph.replay()
            return captured.static_output[:batch].clone()

    @staticmethod
    def _check_input(x):
        if not (isinstance(x, torch.Tensor) and x.is_cuda):
            raise ValueError("CUDAGraphRunner needs a CUDA tensor input, got "
                             f"{x.device if isinstance(x, torch.Tensor) else type(x).__name__}")

    def _capture(self, x):
        """Warm up on ``x``, then capture one forward; ``x`` becomes the static input."""
        static_input = x
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(self.warmup):  # autotuning and folding happen here, not in capture
                self.model(static_input)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_output = self.model(static_input)
        return _Captured(graph, static_input, static_output)


def _padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """A copy of ``x`` with zero rows appended up to ``size``, made as a normal tensor even
    under inference_mode, so later calls outside it can copy into it."""
    layout = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
              and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    with torch.inference_mode(False):
        padded = torch.empty((size, *x.shape[1:]), dtype=x.dtype, device=x.device,
                             memory_format=layout)
        padded[:x.shape[0]].copy_(x)
        padded[x.shape[0]:].zero_()
    return padded
