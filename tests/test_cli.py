"""The command line (``fusedres ...``): argument errors, what it says, ``--help`` without
torch."""
import argparse
import pathlib
import subprocess
import sys

import pytest
import torch

from fusedres import bench, cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


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
                                  compile=False, compile_max=False, seconds=1.0)
        bench.measure(args, torch.device("cpu"))
        err = capsys.readouterr().err
        assert "cuDNN" not in err and "Triton" not in err
        rounds = bench.MIN_ROUNDS
        expected_s = rounds * 3 * per_call_s
        assert f"{rounds} rounds (~{expected_s:.0f} s" in err, err
        assert "(~1 s)" not in err


class TestHelpDoesNotImportTorch:
    """``fusedres --help`` imports no torch: it has nothing to compute, and importing torch
    costs seconds."""

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
