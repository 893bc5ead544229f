"""Defects found by using the library as a user would (issue 9), one test or class each."""
import argparse
import pathlib
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import fusedres
from fusedres import bench, cli
from fusedres.cuda_graphs import ModelWatch
from fusedres.folding import forget_folds

from .conftest import TF32
from .numerics import assert_close_to_reference, model_tol, randomize_bn, rel_tol

ROOT = pathlib.Path(__file__).resolve().parent.parent


class TestFuseLeavesModelUntouchedOnError:
    """Issue 9, item 1: nothing is fused partially."""

    @pytest.mark.parametrize("inplace", [True, False])
    def test_unsupported_later_block(self, inplace):
        model = torchvision.models.resnet18()
        model.layer3[0] = nn.Sequential(nn.Conv2d(128, 256, 3, 2, 1))
        blocks = {f"layer{i}.{j}": block
                  for i in range(1, 5) for j, block in enumerate(getattr(model, f"layer{i}"))}
        params = dict(model.named_parameters())
        with pytest.raises(fusedres.UnsupportedModelError, match=r"layer3\.0: unsupported block"):
            fusedres.fuse(model, inplace=inplace)
        for name, block in blocks.items():
            i, j = name[len("layer"):].split(".")
            now = getattr(model, f"layer{i}")[int(j)]
            assert now is block, f"{name} was replaced by {type(now).__qualname__}"
            if name != "layer3.0":
                assert type(now) is torchvision.models.resnet.BasicBlock, name
        assert list(dict(model.named_parameters())) == list(params)
        for name, p in model.named_parameters():
            assert p is params[name], name


class TestBenchCommandLine:
    """Issue 9, item 10: what a newcomer hits with ``fusedres bench``."""

    @pytest.mark.parametrize("argv", [["--batch", "0"], ["--size", "0"], ["--batch", "-1"],
                                      ["--seconds", "-5"], ["--seconds", "nan"],
                                      ["--seconds", "inf"], ["--batch", "two"]], ids=" ".join)
    def test_rejects_non_positive_numbers(self, argv, capsys, monkeypatch):
        monkeypatch.setattr(bench, "run", lambda args: pytest.fail(f"bench accepted {argv}"))
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["bench", *argv])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"fusedres bench: error: argument {argv[0]}: ")
        assert "positive" in error and argv[1] in error

    def test_cpu_messages_say_what_happens(self, monkeypatch, capsys):
        """No cuDNN on CPU, and the announced duration is the one the rounds will take, not
        the --seconds budget that the minimum number of rounds overruns."""
        per_call_s = 2.0
        output = torch.zeros(1, 10)
        monkeypatch.setattr(bench, "model_contenders", lambda *args: {
            name: (lambda: output) for name in ("eager", "eager_nchw", "fused")})
        monkeypatch.setattr(bench.timing, "warm_up",
                            lambda contenders, device, calls: dict.fromkeys(contenders, per_call_s))
        args = argparse.Namespace(model="resnet18", batch=1, size=32, dtype="float32",
                                  compile=False, seconds=1.0)
        bench.measure(args, torch.device("cpu"))
        err = capsys.readouterr().err
        assert "cuDNN" not in err and "Triton" not in err
        rounds = bench.MIN_ROUNDS
        expected_s = rounds * 3 * per_call_s
        assert f"{rounds} rounds (~{expected_s:.0f} s" in err, err
        assert "(~1 s)" not in err


class TestInputDtypeDiffersFromModel:
    """Issue 9, item 10: the dtype mismatch is named at the first fused step, not at ``fc``."""

    @pytest.fixture
    def torch_path(self, monkeypatch):
        monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)

    @pytest.mark.parametrize("model_dtype,input_dtype", [(torch.float32, torch.float16),
                                                         (torch.bfloat16, torch.float32)],
                             ids=str)
    def test_mismatch_names_both_dtypes(self, torch_path, model_dtype, input_dtype):
        fused = fusedres.fuse(randomize_bn(torchvision.models.resnet18())).eval().to(model_dtype)
        x = torch.randn(1, 3, 32, 32, dtype=input_dtype)
        with torch.no_grad(), pytest.raises(TypeError, match=rf"input has dtype {input_dtype} "
                                            rf"but the model's parameters have dtype {model_dtype}"):
            fused(x)

    def test_autocast_changes_the_dtype_on_purpose(self, torch_path):
        eager = randomize_bn(torchvision.models.resnet18()).eval()
        fused = fusedres.fuse(eager)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = fused(x)
            ref = eager(x)
        assert out.dtype == ref.dtype == torch.bfloat16
        assert_close_to_reference(out, ref.double(), 4 * rel_tol(torch.bfloat16))


class TestHelpDoesNotImportTorch:
    """Issue 9, item 10: ``fusedres --help`` took 7 s importing torch it does not need."""

    @staticmethod
    def _imports_torch(setup):
        """Whether printing the top-level help, after ``setup`` (code defining ``cli``),
        left torch imported in a fresh interpreter."""
        code = (f"import sys\n{setup}\n"
                "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
                "print('torch' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "usage: fusedres" in done.stdout
        return done.stdout.strip().splitlines()[-1] == "True"

    def test_cli_module_itself(self):
        """The command-line module imports each subcommand only when it is chosen."""
        setup = ("import importlib.util\n"
                 "spec = importlib.util.spec_from_file_location('cli', 'fusedres/cli.py')\n"
                 "cli = importlib.util.module_from_spec(spec)\n"
                 "spec.loader.exec_module(cli)")
        assert not self._imports_torch(setup)

    def test_through_the_package(self):
        assert not self._imports_torch("from fusedres import cli")


def _built_in_inference_mode(name="resnet18"):
    """A fused model whose every parameter and buffer is an inference tensor, as serving code
    gets by building or loading the model under ``torch.inference_mode()``."""
    with torch.inference_mode():
        fused = fusedres.fuse(randomize_bn(getattr(torchvision.models, name)()).eval())
    assert all(t.is_inference() for t in fused.state_dict().values())
    return fused


def _float64_reference(fused, x):
    """torchvision's eager model holding ``fused``'s current state, in float64."""
    eager = torchvision.models.resnet18().eval()
    eager.load_state_dict({k: v.clone() for k, v in fused.state_dict().items()})
    with torch.no_grad():
        return eager.double()(x.double())


class TestInferenceTensorModel:
    """Issue 9, item 2: a model made under inference_mode runs, and is never stale except for
    the documented case (in-place edits inside inference_mode, see folding.TensorWatch)."""

    @pytest.fixture(autouse=True)
    def torch_path(self, monkeypatch):
        # The fold cache is the same on every backend; the torch path keeps this fast.
        monkeypatch.setattr(fusedres.kernels, "INTERPRETED", False)

    def _check(self, fused, x, mode):
        with mode():
            out = fused(x)
        assert_close_to_reference(out, _float64_reference(fused, x), model_tol())

    @pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
    def test_runs_in_and_out_of_inference_mode(self, mode):
        self._check(_built_in_inference_mode(), torch.randn(2, 3, 32, 32), mode)

    def test_replaced_tensors_are_seen(self):
        fused = _built_in_inference_mode()
        x = torch.randn(1, 3, 32, 32)
        self._check(fused, x, torch.inference_mode)
        other = randomize_bn(torchvision.models.resnet18()).state_dict()
        with torch.inference_mode():
            fused.load_state_dict(other, assign=True)
        self._check(fused, x, torch.inference_mode)
        with torch.inference_mode():
            fused.double().float()  # new storages for every tensor, rounded on the way
        self._check(fused, x, torch.inference_mode)

    def test_normal_tensors_edited_inside_inference_mode_are_seen(self):
        fused = fusedres.fuse(randomize_bn(torchvision.models.resnet18()).eval())
        x = torch.randn(1, 3, 32, 32)
        self._check(fused, x, torch.inference_mode)
        with torch.inference_mode():
            fused.layer2[0].downsample[1].running_var.mul_(3.0)
            fused.layer3[1].conv2.weight.neg_()
        self._check(fused, x, torch.inference_mode)

    def test_forget_folds_after_editing_inference_tensors_in_place(self):
        fused = _built_in_inference_mode()
        x = torch.randn(1, 3, 32, 32)
        self._check(fused, x, torch.inference_mode)
        with torch.inference_mode():
            fused.load_state_dict(randomize_bn(torchvision.models.resnet18()).state_dict())
        forget_folds(fused)
        self._check(fused, x, torch.inference_mode)

    def test_runner_invalidate_forgets_folds(self):
        """``invalidate()`` must reach the folded weights too, or re-capturing would replay
        the stale ones."""
        fused = _built_in_inference_mode()
        x = torch.randn(1, 3, 32, 32)
        self._check(fused, x, torch.inference_mode)
        with torch.inference_mode():
            fused.conv1.weight.neg_()
        fusedres.CUDAGraphRunner(fused).invalidate()
        self._check(fused, x, torch.inference_mode)


class TestModelWatch:
    """Issue 9, item 4: the CUDA-graph runner's staleness check, exercised on CPU."""

    @pytest.fixture
    def fused(self):
        return fusedres.fuse(randomize_bn(torchvision.models.resnet18())).eval()

    def test_unchanged(self, fused):
        watch = ModelWatch(fused)
        assert not watch.changed()
        nn.Linear(4, 4)  # registers parameters elsewhere: the watch looks again, finds nothing
        assert not watch.changed()
        assert not watch.changed()

    @pytest.mark.parametrize("change", [
        "in_place_weight", "in_place_running_var", "load_state_dict", "half_float_round_trip",
        "replaced_parameter", "replaced_submodule", "replaced_block", "eps"])
    def test_change_is_seen(self, fused, change):
        watch = ModelWatch(fused)
        with torch.no_grad():
            if change == "in_place_weight":
                fused.layer3[1].conv2.weight.neg_()
            elif change == "in_place_running_var":
                fused.layer2[0].downsample[1].running_var.mul_(3.0)
            elif change == "load_state_dict":
                fused.load_state_dict(torchvision.models.resnet18().state_dict())
            elif change == "half_float_round_trip":
                fused.half().float()
            elif change == "replaced_parameter":
                fused.fc.bias = nn.Parameter(torch.randn_like(fused.fc.bias))
            elif change == "replaced_submodule":
                fused.layer2[1].bn2 = randomize_bn(nn.BatchNorm2d(128)).eval()
            elif change == "replaced_block":
                fused.layer4[1] = fusedres.fuse(torchvision.models.resnet18()).layer4[1].eval()
            elif change == "eps":
                fused.layer1[0].bn1.eps = 0.5
        assert watch.changed()

    def test_inference_tensor_model(self):
        fused = _built_in_inference_mode()
        watch = ModelWatch(fused)
        assert not watch.changed()
        with torch.inference_mode():
            fused.load_state_dict(torchvision.models.resnet18().state_dict(), assign=True)
        assert watch.changed()


@pytest.mark.gpu
def test_cuda_graph_runner_never_replays_stale_weights():
    """Issue 9, item 4, on the device: the cheap check still catches every edit."""
    fused = fusedres.fuse(randomize_bn(torchvision.models.resnet18())).cuda().eval()
    runner = fusedres.CUDAGraphRunner(fused)
    x = torch.randn(1, 3, 32, 32, device="cuda")

    def check():
        with torch.no_grad():
            out = runner(x)
        assert_close_to_reference(out, _float64_reference(fused, x.cpu()), model_tol(TF32))

    check()
    check()  # a replay of the captured graph
    with torch.no_grad():
        fused.layer3[1].conv2.weight.neg_()
    check()
    fused.load_state_dict(randomize_bn(torchvision.models.resnet18()).state_dict())
    check()
    fused.layer2[1].bn2 = randomize_bn(nn.BatchNorm2d(128)).cuda().eval()
    check()
