"""Batch-1 latency: replay a fused model through CUDA graphs.

At small batches a ResNet is launch-bound: a few microseconds of CPU work per kernel add up
to more than the GPU work.  A CUDA graph records every launch of one forward once and replays
them with a single call.

    runner = fusedres.CUDAGraphRunner(fused_model)   # eval mode, CUDA
    logits = runner(x)                               # captures on the first call per shape

One graph per input (shape, dtype, device, autocast state): the first call of each warms up
(the autotuner picks its configs outside the capture), then captures; later calls copy the
input into the graph's static input and replay.  Graphs are re-captured whenever any
parameter, buffer or BatchNorm ``eps`` of the model changed (edited in place, replaced,
moved), so a replay never uses stale folded weights; the check costs one read per tensor
(see ``ModelWatch``).  Two kinds of change cannot be seen and need ``runner.invalidate()``:
in-place edits of inference tensors inside ``torch.inference_mode()`` (see
``fusedres.folding.TensorWatch``), and changes made around ``nn.Module``'s registration
methods (deleting a parameter, setting one to ``None``, writing into ``module._parameters``).
"""
import operator
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from .folding import TensorWatch, forget_folds


class _Captured(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    static_input: torch.Tensor
    static_output: torch.Tensor


class _Registrations:
    """Counts every parameter, buffer and submodule registered on any module, anywhere.

    Replacing a model's part (``block.bn2 = ...``, ``load_state_dict(assign=True)``,
    ``model.layer1[0] = ...``) goes through these registrations, so an unchanged count proves
    the model's structure unchanged without walking ``modules()`` (about 0.1 ms on
    resnet50) on every call.  The hooks are global, so they are installed once, lazily, by
    the first ``ModelWatch``.
    """

    count = 0
    _installed = False

    @classmethod
    def install(cls):
        if not cls._installed:
            for register in (nn_module.register_module_parameter_registration_hook,
                             nn_module.register_module_buffer_registration_hook,
                             nn_module.register_module_module_registration_hook):
                register(cls._bump)
            cls._installed = True

    @classmethod
    def _bump(cls, module, name, value):
        cls.count += 1  # returns None: the registered value is left as it is


_EPS = operator.attrgetter("eps")


class ModelWatch:
    """Tells whether anything the model's captured graphs depend on may have changed:
    its parameters and buffers (``TensorWatch``), which ones they are, and BatchNorm ``eps``.

    The tensors are collected once; ``changed()`` walks the model again only after a
    registration somewhere in the process (see ``_Registrations``), so the common call costs
    one data-pointer and one version read per tensor.
    """

    def __init__(self, model: nn.Module):
        _Registrations.install()
        self._model = model
        self._registrations = _Registrations.count
        self._tensors, self._norms = self._collect()
        self._watch = TensorWatch(self._tensors)
        self._eps = tuple(map(_EPS, self._norms))

    def _collect(self):
        # num_batches_tracked counts training steps; no eval-mode forward reads it.
        tensors = [*self._model.parameters(),
                   *(b for name, b in self._model.named_buffers()
                     if not name.endswith("num_batches_tracked"))]
        norms = [m for m in self._model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return tensors, norms

    def changed(self) -> bool:
        if _Registrations.count != self._registrations:
            # Something registered a part somewhere (maybe in another model): look once.
            tensors, norms = self._collect()
            if not (self._watch.watches(tensors) and len(norms) == len(self._norms)
                    and all(map(operator.is_, norms, self._norms))):
                return True
            self._registrations = _Registrations.count
        return self._watch.changed() or tuple(map(_EPS, self._norms)) != self._eps


class CUDAGraphRunner:
    """Callable replaying ``model``'s eval-mode forward through CUDA graphs (see module doc).

    Returns a fresh tensor each call (a copy of the graph's static output, which the next
    replay overwrites).  In train mode it simply calls the model.
    """

    def __init__(self, model: nn.Module, warmup: int = 2):
        self.model = model
        self.warmup = warmup
        self._graphs = {}
        self._watch = None

    def invalidate(self) -> None:
        """Drop every captured graph and the model's folded weights; the next call folds and
        captures again.  Needed only after the changes the module doc lists as unseen."""
        self._graphs.clear()
        self._watch = None
        forget_folds(self.model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:
            return self.model(x)
        if not (isinstance(x, torch.Tensor) and x.is_cuda):
            raise ValueError("CUDAGraphRunner needs a CUDA tensor input, got "
                             f"{x.device if isinstance(x, torch.Tensor) else type(x).__name__}")
        if self._watch is None or self._watch.changed():
            self._graphs.clear()
            self._watch = ModelWatch(self.model)
        autocast = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda")
        key = (tuple(x.shape), x.dtype, x.device, autocast)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(x)
        captured.static_input.copy_(x)
        captured.graph.replay()
        return captured.static_output.clone()

    def _capture(self, x):
        # A normal tensor even under inference_mode, so later calls outside it can copy in.
        with torch.inference_mode(False):
            static_input = x.detach().clone()
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
