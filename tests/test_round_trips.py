"""Saving, copying and exporting a fused model (issue 15): torch.save/torch.load, pickle,
copy.deepcopy, and torch.export save/load in a fresh process, each giving the same outputs;
no fold cache, watch or lock travels with the copy (it folds again from its own tensors).
Programs exported with the operator's old name (``fused_launch``) still load."""
import copy
import io
import os
import pathlib
import pickle
import re
import subprocess
import sys
import zipfile

import pytest
import torch
import torchvision

import fusedres
from fusedres import ops
from fusedres.folding import build_folded

from .conftest import DEVICE, TF32
from .numerics import (assert_close_to_reference, conv_bn_pair, model_tol, randomize_bn,
                       rel_tol)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _torch_save(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


ROUND_TRIPS = {
    "torch.save": _torch_save,
    "pickle": lambda model: pickle.loads(pickle.dumps(model)),
    "deepcopy": copy.deepcopy,
}


def _caches(model):
    return [c for m in model.modules() for v in vars(m).values()
            for c in (v if isinstance(v, list) else [v]) if isinstance(c, fusedres.folding.FoldCache)]


@pytest.mark.parametrize("round_trip", ROUND_TRIPS)
def test_fused_model_round_trip(round_trip, monkeypatch):
    # The torch path: the caches are the same on every backend (FusedConvBN below runs both).
    monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)
    fused = fusedres.fuse(randomize_bn(torchvision.models.resnet18())).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = fused(x)  # every cache filled
    assert all(c._snapshot is not None for c in _caches(fused))
    restored = ROUND_TRIPS[round_trip](fused)
    assert type(restored) is fusedres.FusedResNet
    assert len(_caches(restored)) == len(_caches(fused)) == 17
    assert all(c._snapshot is None for c in _caches(restored)), "a fold cache was copied"
    with torch.no_grad():
        torch.testing.assert_close(restored(x), before, rtol=0, atol=0)
        # The copy's caches watch the copy's tensors: an edit of the copy is seen, and the
        # original is untouched.
        restored.layer2[0].conv1.weight.neg_()
        edited = restored(x)
        torch.testing.assert_close(fused(x), before, rtol=0, atol=0)
    eager = torchvision.models.resnet18().eval()
    eager.load_state_dict(restored.state_dict())
    with torch.no_grad():
        assert_close_to_reference(edited, eager.double()(x.double()), model_tol())


@pytest.mark.parametrize("round_trip", ROUND_TRIPS)
def test_fused_conv_bn_round_trip(round_trip, backend):
    conv, bn = torch.nn.Conv2d(4, 8, 3, padding=1), randomize_bn(torch.nn.BatchNorm2d(8))
    fused = fusedres.FusedConvBN(conv, bn).to(DEVICE).eval()
    x = torch.randn(1, 4, 5, 6, device=DEVICE)
    with torch.no_grad():
        before = fused(x)
        restored = ROUND_TRIPS[round_trip](fused)
        torch.testing.assert_close(restored(x), before, rtol=0, atol=0)
        restored.bn.running_mean.add_(1.0)
        assert not torch.allclose(restored(x), before)
        # The loaded copy's own state_dict loads (atomically) and is followed.
        restored.load_state_dict(fused.state_dict())
        torch.testing.assert_close(restored(x), before, rtol=0, atol=0)


_LOAD_AND_RUN = """
import sys, torch, fusedres  # nothing else: fusedres alone must make the program loadable
program = torch.export.load(sys.argv[1])
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(program.module()(x), sys.argv[3])
"""


def _load_and_run_in_a_fresh_process(program_path, x, folder):
    """The output of the saved program ``program_path`` on ``x``, loaded and run by
    ``_LOAD_AND_RUN`` in a new Python process."""
    torch.save(x, folder / "x.pt")
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_RUN, str(program_path), str(folder / "x.pt"),
         str(folder / "out.pt")],
        capture_output=True, text=True, timeout=300, cwd=folder,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
            str(ROOT), os.environ.get("PYTHONPATH")]))})
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(folder / "out.pt")


def test_export_save_load_in_a_fresh_process(tmp_path):
    if not fusedres.ops.uses_triton(torch.empty(0, device=DEVICE)):
        pytest.skip("the Triton path needs a GPU or TRITON_INTERPRET=1")
    # A small ResNet (one block per stage) keeps the interpreted runs short.
    fused = fusedres.FusedResNet(fusedres.FusedBasicBlock, [1, 1, 1, 1], num_classes=10)
    fused = randomize_bn(fused).to(DEVICE).eval()
    x = torch.randn(1, 3, 16, 16, device=DEVICE)
    with torch.no_grad():
        program = torch.export.export(fused, (x,))
        here = program.module()(x)
    assert any(n.target is torch.ops.fusedres.conv_bn_act.default for n in program.graph.nodes)
    torch.export.save(program, tmp_path / "model.pt2")
    there = _load_and_run_in_a_fresh_process(tmp_path / "model.pt2", x, tmp_path)
    if DEVICE.type == "cpu":  # the same interpreted kernels: the same bits
        torch.testing.assert_close(there, here, rtol=0, atol=0)
    eager = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1],
                                      num_classes=10).eval()
    eager.load_state_dict({k: v.cpu() for k, v in fused.state_dict().items()})
    with torch.no_grad():
        assert_close_to_reference(there, eager.double()(x.cpu().double()), model_tol(TF32))


class _ExportedBeforeTheRename(torch.nn.Module):
    """One conv + BN + ReLU launch as programs exported before the operator was renamed
    (``fused_launch`` -> ``conv_bn_act``) call it."""

    def __init__(self, folded):
        super().__init__()
        self.register_buffer("weight", folded.weight)  # packed
        self.register_buffer("bias", folded.bias)

    def forward(self, x):
        return torch.ops.fusedres.fused_launch(
            x, self.weight, self.bias, None, None, None, [3, 3], 1, 1, 1, 1, 1, False, True,
            TF32)


def test_program_exported_with_the_old_operator_name_loads(tmp_path):
    """``torch.ops.fusedres.fused_launch`` stays registered so that such programs load in a
    fresh process after ``import fusedres`` alone, and compute the same launch."""
    if not ops.uses_triton(torch.empty(0, device=DEVICE)):
        pytest.skip("the Triton path needs a GPU or TRITON_INTERPRET=1")
    conv, bn = conv_bn_pair(8, 16, 3, padding=1)
    folded = build_folded([(conv, bn)], torch.float32, DEVICE, packed=True)
    x = torch.randn(2, 8, 7, 9, device=DEVICE)
    with torch.no_grad():
        program = torch.export.export(_ExportedBeforeTheRename(folded).to(DEVICE), (x,))
        here = program.module()(x)
    torch.export.save(program, tmp_path / "old.pt2")
    with zipfile.ZipFile(tmp_path / "old.pt2") as archive:
        saved = b"".join(archive.read(name) for name in archive.namelist())
    assert re.search(rb'"target":\s*"torch\.ops\.fusedres\.fused_launch\.default"', saved), \
        "the archive does not call the operator by its old name"
    there = _load_and_run_in_a_fresh_process(tmp_path / "old.pt2", x, tmp_path)
    if DEVICE.type == "cpu":  # the same interpreted kernel: the same bits
        torch.testing.assert_close(there, here, rtol=0, atol=0)
    with torch.no_grad():
        ref = torch.relu(bn.eval().double()(conv.double()(x.cpu().double())))
    assert_close_to_reference(there, ref, rel_tol(torch.float32, TF32))
