"""A source checkout runs without installation (fusedres/_source_checkout.py): its own
kernels/ folder is ``fusedres.kernels``."""
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_runs_from_a_source_checkout_without_installation(tmp_path):
    checkout = tmp_path / "checkout"
    for folder in ("fusedres", "kernels"):
        shutil.copytree(os.path.join(REPO, folder), checkout / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import fusedres, fusedres.kernels as k; from fusedres.kernels.conv import kernel; "
              "print(k.__file__); print(kernel.__file__); print(fusedres.kernels is k)")
    out = subprocess.run([sys.executable, "-c", script], cwd=checkout, capture_output=True,
                         text=True, env=_clean_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    kernels_file, module_file, same = out.stdout.split()
    # The checkout's own kernels, not the installed (editable) ones.
    assert kernels_file == str(checkout / "kernels" / "__init__.py")
    assert module_file == str(checkout / "kernels" / "conv" / "kernel.py")
    assert same == "True"
