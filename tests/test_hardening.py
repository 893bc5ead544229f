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

from .numerics import assert_close_to_reference, randomize_bn, rel_tol

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

    @pytest.mark.xfail(strict=True, reason="fusedres/__init__.py imports torch eagerly (through "
                                           "convert, folding ...); the entry point "
                                           "fusedres.cli:main runs it first")
    def test_through_the_package(self):
        assert not self._imports_torch("from fusedres import cli")
