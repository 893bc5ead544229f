"""``fusedres.CUDAGraphRunner``: its bounds (LRU of captured graphs), batch-size bucketing,
its staleness checks (tests/test_watch.py tests ``ModelWatch`` itself), and replays
against eager.  The bookkeeping runs on CPU with a stand-in for graph capture
(``CPUGraphRunner``); the same behaviour with real CUDA graphs is GPU-marked.  CUDA graphs
inside ``torch.compile(mode="reduce-overhead")``: tests/test_library.py."""
import pytest
import torch
import torchvision
from torch import nn

import fusedres
from fusedres.cuda_graphs import LRU, CUDAGraphRunner, bucket_size

from .conftest import TF32
from .numerics import assert_close_to_reference, model_tol, randomize_bn
from .builders import CPUGraphRunner, eager_and_fused, float64_reference, tiny_fused_model

TOL = model_tol(TF32)


class TestLRU:
    def test_evicts_least_recently_used(self):
        lru = LRU(2)
        lru.put("a", 1)
        lru.put("b", 2)
        assert lru.get("a") == 1  # now "b" is the oldest
        lru.put("c", 3)
        assert len(lru) == 2 and lru.get("b") is None
        assert lru.get("a") == 1 and lru.get("c") == 3

    @pytest.mark.parametrize("capacity", [0, -1, 2.5, None])
    def test_rejects_bad_capacity(self, capacity):
        with pytest.raises(ValueError, match="positive int"):
            LRU(capacity)


def test_bucket_size():
    buckets = (1, 2, 4, 8)
    assert [bucket_size(n, buckets) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]
    assert bucket_size(9, buckets) == 9  # beyond the largest bucket: its own size
    assert bucket_size(3, None) == 3


@pytest.mark.parametrize("kwargs,message", [
    ({"check": "sometimes"}, "check must be"),
    ({"buckets": (4, 2)}, "strictly increasing"),
    ({"buckets": ()}, "strictly increasing"),
    ({"buckets": (0, 1)}, "strictly increasing"),
    ({"max_graphs": 0}, "positive int"),
])
def test_runner_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CUDAGraphRunner(nn.Identity(), **kwargs)


class TestRunnerBookkeeping:
    @pytest.fixture
    def model(self, torch_path):
        return tiny_fused_model()

    def test_keeps_at_most_max_graphs(self, model):
        runner = CPUGraphRunner(model, max_graphs=2)
        for batch in (1, 2, 3, 1, 2, 3):
            x = torch.randn(batch, 3, 8, 8)
            with torch.no_grad():
                torch.testing.assert_close(runner(x), model(x))
            assert len(runner._graphs) <= 2
        assert runner.captures == [1, 2, 3, 1, 2, 3]  # cyclic use defeats a 2-entry LRU
        with torch.no_grad():
            runner(torch.randn(2, 3, 8, 8))  # 3 and 2 are held: no capture
        assert runner.captures[-1] == 3

    def test_buckets_pad_and_slice(self, model):
        runner = CPUGraphRunner(model, buckets=(2, 4, 8))
        outputs = {}
        with torch.no_grad():
            for batch in (3, 1, 4, 2, 7, 8, 11):
                x = torch.randn(batch, 3, 8, 8)
                outputs[batch] = out = runner(x)
                assert out.shape == (batch, 16)
                torch.testing.assert_close(out, model(x))
        assert runner.captures == [4, 2, 8, 11]  # 11 is beyond the buckets: its own graph
        captured = runner._graphs.get(((4, 3, 8, 8), torch.float32, torch.device("cpu"), False))
        assert captured is not None
        with torch.no_grad():
            runner(torch.randn(3, 3, 8, 8))
        assert torch.equal(captured.static_input[3:], torch.zeros(1, 3, 8, 8))  # padding rows

    def test_full_check_recaptures_after_an_edit(self, model):
        runner = CPUGraphRunner(model)
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            runner(x)
            model[1].bn2.running_var.mul_(2.0)
            torch.testing.assert_close(runner(x), model(x))
        assert runner.captures == [2, 2]

    def test_cheap_check_sees_loads_and_replacements_only(self, model):
        runner = CPUGraphRunner(model, check="cheap")
        x = torch.randn(2, 3, 8, 8)
        other = tiny_fused_model().state_dict()
        with torch.no_grad():
            runner(x)
            runner(x)
            assert runner.captures == [2]
            model[1].load_state_dict({k[len("1."):]: v for k, v in other.items()
                                      if k.startswith("1.")})  # a fused module's load
            torch.testing.assert_close(runner(x), model(x))
            assert runner.captures == [2, 2]
            model[0].bn = randomize_bn(nn.BatchNorm2d(8)).eval()  # a replaced part
            torch.testing.assert_close(runner(x), model(x))
            assert runner.captures == [2, 2, 2]
            model[0].conv.weight.neg_()  # in place: the caller promised invalidate()
            runner(x)
            assert runner.captures == [2, 2, 2]
            runner.invalidate()
            torch.testing.assert_close(runner(x), model(x))
            assert runner.captures == [2, 2, 2, 2]


def _gpu_model():
    return fusedres.fuse(randomize_bn(torchvision.models.resnet18())).cuda().eval()


def _eager(fused, x):
    eager = torchvision.models.resnet18().eval()
    eager.load_state_dict({k: v.cpu() for k, v in fused.state_dict().items()})
    with torch.no_grad():
        return eager.double()(x.cpu().double())


@pytest.mark.gpu
def test_gpu_runner_lru_bounds_graphs():
    fused = _gpu_model()
    runner = CUDAGraphRunner(fused, max_graphs=2)
    with torch.no_grad():
        for batch in (1, 2, 3, 1):
            x = torch.randn(batch, 3, 32, 32, device="cuda")
            assert_close_to_reference(runner(x), _eager(fused, x), model_tol(TF32), f"batch {batch}")
            assert len(runner._graphs) <= 2


@pytest.mark.gpu
def test_gpu_runner_buckets_pad_and_slice():
    fused = _gpu_model()
    runner = CUDAGraphRunner(fused, buckets=(1, 4, 8))
    with torch.no_grad():
        for batch in (3, 2, 4, 5):
            x = torch.randn(batch, 3, 32, 32, device="cuda")
            out = runner(x)
            assert out.shape == (batch, 1000)
            assert_close_to_reference(out, _eager(fused, x), model_tol(TF32), f"batch {batch}")
    assert len(runner._graphs) == 2  # buckets 4 and 8


@pytest.mark.gpu
def test_gpu_runner_cheap_check():
    fused = _gpu_model()
    runner = CUDAGraphRunner(fused, check="cheap")
    x = torch.randn(1, 3, 32, 32, device="cuda")
    with torch.no_grad():
        runner(x)
        fused.load_state_dict(randomize_bn(torchvision.models.resnet18()).state_dict())
        assert_close_to_reference(runner(x), _eager(fused, x), model_tol(TF32), "after a load")
        fused.layer3[1].conv2.weight.neg_()
        runner.invalidate()
        assert_close_to_reference(runner(x), _eager(fused, x), model_tol(TF32),
                                  "after an edit and invalidate()")


@pytest.mark.gpu
def test_cuda_graph_runner_never_replays_stale_weights():
    """Issue 9, item 4, on the device: the cheap check still catches every edit."""
    fused = fusedres.fuse(randomize_bn(torchvision.models.resnet18())).cuda().eval()
    runner = fusedres.CUDAGraphRunner(fused)
    x = torch.randn(1, 3, 32, 32, device="cuda")

    def check():
        with torch.no_grad():
            out = runner(x)
        assert_close_to_reference(out, float64_reference(fused, x.cpu()), model_tol(TF32))

    check()
    check()  # a replay of the captured graph
    with torch.no_grad():
        fused.layer3[1].conv2.weight.neg_()
    check()
    fused.load_state_dict(randomize_bn(torchvision.models.resnet18()).state_dict())
    check()
    fused.layer2[1].bn2 = randomize_bn(nn.BatchNorm2d(128)).cuda().eval()
    check()


def test_cuda_graph_runner_rejects_cpu_input():
    _, fused = eager_and_fused("resnet18")
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        fusedres.CUDAGraphRunner(fused)(torch.randn(1, 3, 32, 32))


@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager_and_never_goes_stale():
    eager, fused = eager_and_fused("resnet50")
    runner = fusedres.CUDAGraphRunner(fused)
    x1, x2 = torch.randn(1, 3, 64, 64, device="cuda"), torch.randn(1, 3, 64, 64, device="cuda")
    with torch.no_grad():
        assert_close_to_reference(runner(x1), eager.double()(x1.double()), TOL, "first call")
        assert_close_to_reference(runner(x2), eager.double()(x2.double()), TOL, "replay")
        fused.layer3[0].conv2.weight.mul_(-1)
        eager.layer3[0].conv2.weight.mul_(-1)
        assert_close_to_reference(runner(x1), eager.double()(x1.double()), TOL, "after edit")
