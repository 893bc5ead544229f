"""Memory stays flat under a server's load (issue 15): 10,000 calls with random batch sizes
1-64 on CPU, through a fused model's fold caches and through CUDAGraphRunner's LRU of
captured graphs (stand-in capture, see test_cuda_graphs.CPUGraphRunner)."""
import gc
import random
import tracemalloc
import warnings
import weakref

import pytest
import torch

from fusedres import FusedConvBN
from fusedres.folding import FoldCache

from .numerics import conv_bn_pair
from .builders import CPUGraphRunner, tiny_fused_model

CALLS = 10_000
WARMUP = 500


def live_tensors(runner=None):
    """(number of live tensors, bytes of their distinct storages), the storages of
    ``runner``'s held graphs left out of the bytes: which buckets the LRU holds at a given
    moment, and so their sizes, depends on the last few batches."""
    with warnings.catch_warnings():  # isinstance() on torch's deprecated aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    held = set()
    if runner is not None:
        held = {t.untyped_storage().data_ptr() for captured in runner._graphs._entries.values()
                for t in (captured.static_input, captured.static_output)}
    storages = dict(filter(None, map(_storage, tensors)))
    return len(tensors), sum(n for ptr, n in storages.items() if ptr not in held)


def _storage(t):
    """(data pointer, bytes) of ``t``'s storage; None for tensors without memory of their own:
    meta tensors, and fake tensors an earlier torch.compile in this process left behind."""
    if t.device.type == "meta":
        return None
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except RuntimeError:
        return None


@pytest.fixture
def one_thread():
    """Tiny convolutions split over threads spend their time waiting for each other (20x
    slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("through", ["model", "runner"])
def test_memory_flat_over_10000_calls(through, seed, torch_path, one_thread):
    model = tiny_fused_model()
    # 7 buckets, room for 6 graphs: the rare small batches keep evicting each other.
    runner = None if through == "model" else CPUGraphRunner(
        model, max_graphs=6, buckets=(1, 2, 4, 8, 16, 32, 64))
    call = model if runner is None else runner
    batches = random.Random(seed)
    inputs = torch.randn(64, 3, 4, 4)

    def run(calls):
        with torch.inference_mode():
            for _ in range(calls):
                call(inputs[:batches.randint(1, 64)])

    run(WARMUP)  # every bucket captured at least once, every fold built
    tracemalloc.start()
    try:
        gc.collect()  # garbage cycles are not memory held
        before_python = tracemalloc.get_traced_memory()[0]
        before = live_tensors(runner)
        run(CALLS)
        gc.collect()
        after_python = tracemalloc.get_traced_memory()[0]
        after = live_tensors(runner)
    finally:
        tracemalloc.stop()
    print(f"{through}: {CALLS} calls: live tensors {before[0]} -> {after[0]}, their storages "
          f"{before[1]} -> {after[1]} bytes (held graphs' excluded); Python heap "
          f"{before_python} -> {after_python} bytes")
    if runner is not None:
        assert len(runner._graphs) == 6 and len(runner.captures) > 2 * 7  # graphs were dropped
    assert after[0] <= before[0] and after[1] <= before[1]
    assert after_python - before_python < 64 * 1024


def test_fold_cache_holds_one_variant_per_layout(monkeypatch):
    """Each (dtype, device, layout) folds once; an edit drops every old variant's tensors."""
    monkeypatch.setattr("fusedres.kernels.INTERPRETED", False)
    fused = FusedConvBN(*conv_bn_pair(4, 8, 3, 1, 1)).eval()
    cache = fused._fold
    assert isinstance(cache, FoldCache)
    pairs = [(fused.conv, fused.bn)]
    cpu = torch.device("cpu")
    first = cache.get(pairs, torch.float32, cpu, packed=False)
    assert cache.get(pairs, torch.float32, cpu, packed=False) is first
    packed = cache.get(pairs, torch.float32, cpu, packed=True)
    half = cache.get(pairs, torch.bfloat16, cpu, packed=False)
    assert len(cache._snapshot.variants) == 3
    old = [weakref.ref(t) for t in (*first[:2], *packed[:2], *half[:2])]
    with torch.no_grad():
        fused.bn.running_var.add_(1.0)
    assert cache.get(pairs, torch.float32, cpu, packed=False) is not first
    assert len(cache._snapshot.variants) == 1
    del first, packed, half
    gc.collect()
    assert all(ref() is None for ref in old), "the cache still holds replaced tensors"
