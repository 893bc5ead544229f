"""One fused model and one FusedConvBN called from several threads at once (issue 15), with
and without a weight update running in another thread: no call raises, no launch mixes old
and new weights, and every call after the update uses the new weights."""
import sys
import threading
import time

import pytest
import torch
import torchvision

import fusedres
from fusedres import FusedConvBN, folding

from .conftest import DEVICE, TF32
from .numerics import assert_close_to_reference, conv_bn_pair, model_tol, randomize_bn

THREADS = 4
# Between two loads the writer pauses: folds wait for loads to end, so a writer loading
# without a break would starve every reader (real servers load weights rarely).
PAUSE_S = 1e-3


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    """Python switches threads every 5 ms by default; switching far more often makes the
    interleavings these tests look for likely instead of lucky."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(previous)


def hammer(call, calls, update=None):
    """Calls ``call()`` ``calls`` times from each of THREADS threads started together, while
    ``update(reading)`` runs in one more thread (``reading()`` is true until every reader is
    done), then once more per thread after the update returned.  Returns the results made
    during and after the update; re-raises the first exception of any thread."""
    barrier = threading.Barrier(THREADS + 1)
    updated = threading.Event()
    lock = threading.Lock()
    during, after, errors, finished = [], [], [], [0]

    def reader():
        try:
            barrier.wait()
            for _ in range(calls):
                during.append(call())
            with lock:
                finished[0] += 1
            updated.wait()
            after.append(call())
        except BaseException as error:  # noqa: BLE001  (reported in the main thread)
            errors.append(error)
            updated.set()

    def writer():
        try:
            barrier.wait()
            if update is not None:
                update(lambda: finished[0] < THREADS and not errors)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
        finally:
            updated.set()

    threads = [threading.Thread(target=reader) for _ in range(THREADS)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    assert len(during) == THREADS * calls and len(after) == THREADS
    return during, after


def _which(out, refs):
    """Index of the reference ``out`` matches (to rounding), or None."""
    for i, ref in enumerate(refs):
        if torch.allclose(out, ref, rtol=1e-4, atol=1e-5):
            return i
    return None


class TestFusedConvBN:
    # Tiny: under the interpreter every launch of every thread is interpreted.
    SHAPE = (2, 5, 6, 7)

    @pytest.fixture
    def setup(self, backend):
        conv, bn = conv_bn_pair(5, 12, 3, 1, 1, bias=True)
        fused = FusedConvBN(conv, bn).to(DEVICE).eval()
        other = FusedConvBN(*conv_bn_pair(5, 12, 3, 1, 1, bias=True)).to(DEVICE).eval()
        states = [{k: v.clone() for k, v in m.state_dict().items()} for m in (fused, other)]
        x = torch.randn(*self.SHAPE, device=DEVICE)
        refs = []
        for state in states:  # each state's output, computed alone
            fused.load_state_dict(state)
            with torch.no_grad():
                refs.append(fused(x).clone())
        fused.load_state_dict(states[0])
        assert _which(refs[1], refs[:1]) is None, "the two states must give different outputs"
        calls = 8 if backend == "triton" else 200
        return fused, states, x, refs, calls

    def _call(self, fused, x):
        def call():
            with torch.no_grad():
                return fused(x)
        return call

    def test_concurrent_calls(self, setup):
        fused, _, x, refs, calls = setup
        during, after = hammer(self._call(fused, x), calls)
        assert all(_which(out, refs[:1]) == 0 for out in during + after)

    def test_concurrent_load_state_dict(self, setup):
        """Every launch uses one state or the other, never a mix of the two (a fold during
        a load would read some new and some old tensors); after the last load, the new."""
        fused, states, x, refs, calls = setup

        def update(reading):
            loads = 0
            while reading() or loads < 2:
                fused.load_state_dict(states[1])
                fused.load_state_dict(states[0])
                loads += 2
                time.sleep(PAUSE_S)
            fused.load_state_dict(states[1])

        during, after = hammer(self._call(fused, x), calls, update)
        seen = [_which(out, refs) for out in during]
        assert None not in seen, f"{seen.count(None)} of {len(seen)} outputs mix two states"
        assert all(_which(out, refs) == 1 for out in after)

    def test_concurrent_in_place_edits(self, setup):
        """Edits of single tensors by another thread: the calls after them see them."""
        fused, _, x, _, calls = setup

        def update(reading):
            with torch.no_grad():
                while True:
                    fused.bn.running_var.mul_(2.0)
                    fused.conv.weight.neg_()
                    fused.bn.running_var.div_(2.0)
                    if not reading():
                        break
                fused.bn.bias.add_(1.0)

        during, after = hammer(self._call(fused, x), calls, update)
        assert all(torch.isfinite(out).all() for out in during)
        ref = _eager(fused, x)
        for out in after:
            assert_close_to_reference(out, ref, 1e-4 if not TF32 else 2e-3)


def _eager(fused, x):
    """float64 eager conv -> bn -> relu with ``fused``'s current weights."""
    conv = torch.nn.Conv2d(fused.conv.in_channels, fused.conv.out_channels, 3, 1, 1,
                           bias=fused.conv.bias is not None).double()
    bn = torch.nn.BatchNorm2d(fused.conv.out_channels).double().eval()
    conv.load_state_dict(fused.conv.state_dict())
    bn.load_state_dict(fused.bn.state_dict())
    conv, bn = conv.to(x.device), bn.to(x.device)
    with torch.no_grad():
        return torch.relu(bn(conv(x.double())))


class TestFusedModel:
    """A whole fused ResNet-18 on the CPU torch path (the fold cache is the same on every
    backend; a ResNet under the interpreter would take minutes per thread)."""

    CALLS = 10

    @pytest.fixture
    def fused(self, monkeypatch):
        monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
        return fusedres.fuse(randomize_bn(torchvision.models.resnet18())).eval()

    @staticmethod
    def _reference(fused, x):
        eager = torchvision.models.resnet18().eval()
        eager.load_state_dict({k: v.clone() for k, v in fused.state_dict().items()})
        with torch.no_grad():
            return eager.double()(x.double())

    def _call(self, fused, x):
        def call():
            with torch.inference_mode():
                return fused(x)
        return call

    def test_concurrent_calls(self, fused):
        x = torch.randn(1, 3, 16, 16)
        during, after = hammer(self._call(fused, x), self.CALLS)
        ref = self._reference(fused, x)
        for out in during + after:
            assert_close_to_reference(out, ref, model_tol())

    @pytest.mark.parametrize("update", ["load_state_dict", "in_place"])
    def test_concurrent_update(self, fused, update):
        x = torch.randn(1, 3, 16, 16)
        new = randomize_bn(torchvision.models.resnet18()).state_dict()

        def load(reading):
            old = {k: v.clone() for k, v in fused.state_dict().items()}
            while reading():
                fused.load_state_dict(new)
                fused.load_state_dict(old)
                time.sleep(20 * PAUSE_S)  # about one forward of the model
            fused.load_state_dict(new)

        def edit(reading):
            factor = 1.5  # alternates with its inverse, so the variances stay in range
            with torch.no_grad():
                while reading():
                    for block in (fused.layer1[0], fused.layer3[0]):
                        block.conv2.weight.neg_()
                        block.bn2.running_var.mul_(factor)
                    factor = 1 / factor
                    time.sleep(PAUSE_S)
                fused.layer2[1].bn1.running_mean.add_(1.0)
                fused.conv1.weight.neg_()

        during, after = hammer(self._call(fused, x), self.CALLS,
                               load if update == "load_state_dict" else edit)
        assert all(torch.isfinite(out).all() for out in during)
        ref = self._reference(fused, x)
        for out in after:
            assert_close_to_reference(out, ref, model_tol())


def test_edit_while_folding_is_not_cached_as_current(backend, monkeypatch):
    """The race of an edit landing while a fold reads its sources, made deterministic: the
    edit happens right after the first fold read the old values.  The versions must be the
    ones from before the fold, so the fold is seen as stale (and redone, for this very call)."""
    fused = FusedConvBN(*conv_bn_pair(5, 12, 3, 1, 1)).to(DEVICE).eval()
    x = torch.randn(1, 5, 6, 7, device=DEVICE)
    real_build = folding.build_folded
    edits = []

    def build_then_edit(*args, **kwargs):
        folded = real_build(*args, **kwargs)
        if not edits:
            with torch.no_grad():
                fused.bn.running_mean.add_(3.0)  # "another thread", mid-fold
            edits.append(1)
        return folded

    monkeypatch.setattr(folding, "build_folded", build_then_edit)
    with torch.no_grad():
        first = fused(x)
        second = fused(x)
    ref = _eager(fused, x)
    tol = 1e-4 if not TF32 else 2e-3
    assert_close_to_reference(first, ref, tol, "the call during which the edit landed")
    assert_close_to_reference(second, ref, tol, "the call after it")


def test_model_run_by_a_load_hook_does_not_wait_for_itself(monkeypatch):
    """A fold waits for other threads' loads only: a hook that runs the model while its own
    load is in progress must not deadlock, and the model must follow the loaded weights."""
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    fused = FusedConvBN(*conv_bn_pair(5, 12, 3, 1, 1)).eval()
    x = torch.randn(1, 5, 6, 7)
    new = FusedConvBN(*conv_bn_pair(5, 12, 3, 1, 1)).state_dict()
    seen = []

    def run_after_loading(module, incompatible_keys):
        with torch.no_grad():
            seen.append(module(x))

    fused.register_load_state_dict_post_hook(run_after_loading)
    done = threading.Thread(target=fused.load_state_dict, args=(new,), daemon=True)
    done.start()
    done.join(timeout=60)
    assert not done.is_alive(), "load_state_dict deadlocked in its own hook"
    assert len(seen) == 1
    with torch.no_grad():
        torch.testing.assert_close(fused(x), seen[0])
    assert_close_to_reference(seen[0], _eager(fused, x), 1e-4)
