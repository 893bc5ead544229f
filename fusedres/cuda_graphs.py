"""Batch-1 latency: replay a fused model through CUDA graphs.

At small batches a ResNet is launch-bound: a few microseconds of CPU work per kernel add up
to more than the GPU work.  A CUDA graph records every launch of one forward once and replays
them with a single call.

    runner = fusedres.CUDAGraphRunner(fused_model)   # eval mode, CUDA
    logits = runner(x)                               # captures on the first call per shape

One graph per input (shape, dtype, device, autocast state): the first call of each warms up
(the autotuner picks its configs outside the capture), then captures; later calls copy the
input into the graph's static input and replay.  Graphs are re-captured whenever any
parameter, buffer or BatchNorm ``eps`` of the model changed (in place, replaced, moved), so a
replay never uses stale folded weights.
"""
from typing import NamedTuple

import torch
from torch import nn


class _Captured(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    static_input: torch.Tensor
    static_output: torch.Tensor


def model_fingerprint(model: nn.Module):
    """Changes whenever anything the model's folded weights depend on changes."""
    tensors = [*model.parameters(), *model.buffers()]
    eps = tuple(m.eps for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return eps + tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


class CUDAGraphRunner:
    """Callable replaying ``model``'s eval-mode forward through CUDA graphs (see module doc).

    Returns a fresh tensor each call (a copy of the graph's static output, which the next
    replay overwrites).  In train mode it simply calls the model.
    """

    def __init__(self, model: nn.Module, warmup: int = 2):
        self.model = model
        self.warmup = warmup
        self._graphs = {}
        self._fingerprint = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:
            return self.model(x)
        if not (isinstance(x, torch.Tensor) and x.is_cuda):
            raise ValueError("CUDAGraphRunner needs a CUDA tensor input, got "
                             f"{x.device if isinstance(x, torch.Tensor) else type(x).__name__}")
        fingerprint = model_fingerprint(self.model)
        if fingerprint != self._fingerprint:
            self._graphs.clear()
            self._fingerprint = fingerprint
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
