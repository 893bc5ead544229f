"""Fused models inside torch.compile (with its CUDA graphs: reduce-overhead) and torch.export;
the custom operator.  fusedres's own CUDAGraphRunner: tests/test_cuda_graphs.py."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fusedres
from fusedres import ops, trace
from fusedres.folding import build_folded

from .conftest import DEVICE, TF32
from .builders import eager_and_fused
from .numerics import assert_close_to_reference, conv_bn_pair, model_tol

TOL = model_tol(TF32)


@pytest.mark.parametrize("name,compiler", [("resnet18", "inductor"), ("resnet50", "aot_eager")])
def test_compile_fullgraph_matches_eager(name, compiler, backend):
    """fullgraph=True turns any graph break into an error."""
    torch._dynamo.reset()
    eager, fused = eager_and_fused(name)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    compiled = torch.compile(fused, fullgraph=True, backend=compiler)
    with torch.no_grad():
        out = compiled(x)
        ref = eager.double()(x.double())
    assert_close_to_reference(out, ref, TOL, f"compiled {name}")


def test_compiled_model_sees_weight_changes(backend):
    torch._dynamo.reset()
    eager, fused = eager_and_fused("resnet18")
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        compiled(x)
        fused.layer4[1].bn2.running_mean.add_(1.0)
        eager.layer4[1].bn2.running_mean.add_(1.0)
        out = compiled(x)
        ref = eager.double()(x.double())
    assert_close_to_reference(out, ref, TOL, "after an in-place BN edit")


def test_export_contains_the_fused_operator():
    if not ops.uses_triton(torch.empty(0, device=DEVICE)):
        pytest.skip("the Triton path needs a GPU or TRITON_INTERPRET=1")
    eager, fused = eager_and_fused("resnet18")
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        program = torch.export.export(fused, (x,))
        out = program.module()(x)
        ref = eager.double()(x.double())
    launches = [n for n in program.graph.nodes
                if n.target is torch.ops.fusedres.conv_bn_act.default]
    assert len(launches) == 1 + 2 * 8  # stem + two launches in each of the 8 BasicBlocks
    assert_close_to_reference(out, ref, TOL, "exported")


def _op_samples(dtype=torch.float32):
    """Real operator arguments for every distinct launch of resnet18 and resnet50 (small
    images), including the residual and shortcut epilogues and the stem."""
    samples = []
    for name in ("resnet18", "resnet50"):
        model = getattr(fusedres, name)().eval()
        traced = trace.trace_launches(model, batch=1, size=(24, 20), dtype=dtype)
        for geometry in trace.unique(traced):
            conv, bn = conv_bn_pair(geometry.c_in, geometry.c_out, geometry.kernel_size,
                                    geometry.stride, geometry.padding, geometry.dilation,
                                    geometry.groups)
            pairs = [(conv, bn)]
            x = torch.randn(geometry.batch, geometry.c_in, geometry.height, geometry.width,
                            dtype=dtype)
            xs = None
            short = geometry.shortcut
            if short is not None:
                pairs.append(conv_bn_pair(short.channels, geometry.c_out, 1,
                                          1 if short.pool else short.stride))
                xs = torch.randn(geometry.batch, short.channels, short.height, short.width,
                                 dtype=dtype)
            folded = build_folded(pairs, dtype, torch.device("cpu"), packed=True)
            residual = (torch.randn(geometry.output_shape, dtype=dtype) if geometry.residual
                        else None)
            samples.append((geometry, (
                x, folded.weight, folded.bias, residual, xs, folded.shortcut_weight,
                list(geometry.kernel_size), geometry.stride, geometry.padding,
                geometry.dilation, geometry.groups,
                1 if short is None else short.stride, short is not None and short.pool,
                geometry.relu, False)))
    return samples


def test_fake_implementation_matches_real_for_every_launch():
    if not fusedres.kernels.INTERPRETED and DEVICE.type == "cpu":
        pytest.skip("the real operator needs a GPU or TRITON_INTERPRET=1")
    samples = _op_samples()
    assert len(samples) > 20
    for geometry, args in samples:
        real = torch.ops.fusedres.conv_bn_act(*args)
        with FakeTensorMode() as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fake = torch.ops.fusedres.conv_bn_act(*fake_args)
        assert (fake.shape, fake.dtype, fake.stride()) == (real.shape, real.dtype, real.stride()), \
            geometry.describe()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_opcheck(dtype):
    if not fusedres.kernels.INTERPRETED and DEVICE.type == "cpu":
        pytest.skip("the real operator needs a GPU or TRITON_INTERPRET=1")
    samples = _op_samples(dtype)
    # One of each epilogue: plain, residual, shortcut (the stem is the first launch).
    chosen = [samples[0][1],
              next(a for s, a in samples if s.residual),
              next(a for s, a in samples if s.shortcut is not None)]
    for args in chosen:
        args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.fusedres.conv_bn_act.default, args)


@pytest.mark.gpu
def test_compile_reduce_overhead_on_gpu(monkeypatch):
    """The numbers, and that they came from a CUDA graph: Inductor skipped no graph (a skip,
    e.g. for an op it deems unsafe to capture, silently runs the kernels one by one with the
    same numbers) and a steady-state call replays a captured graph."""
    from torch._dynamo.utils import counters

    replays = []
    replay = torch.cuda.CUDAGraph.replay

    def counting_replay(graph):
        replays.append(graph)
        return replay(graph)

    # Inductor's CUDA graph trees replay through torch.cuda.CUDAGraph.replay.
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting_replay)
    torch._dynamo.reset()
    counters.clear()
    eager, fused = eager_and_fused("resnet18")
    compiled = torch.compile(fused, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(1, 3, 64, 64, device="cuda")
    with torch.no_grad():
        for _ in range(3):  # warm-up, record, replay
            out = compiled(x)
        ref = eager.double()(x.double())
        # Checked now: the next replay overwrites the graph's output memory.
        assert_close_to_reference(out, ref, TOL, "reduce-overhead")
        replays_before = len(replays)
        again = compiled(x)
        assert_close_to_reference(again, ref, TOL, "reduce-overhead, one more replay")
    assert counters["inductor"]["cudagraph_skips"] == 0, "Inductor skipped CUDA graphs"
    assert replays_before > 0, "no CUDA graph was replayed in three calls"
    assert len(replays) > replays_before, "a steady-state call did not replay a CUDA graph"
