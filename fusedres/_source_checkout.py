"""Make ``fusedres.kernels`` importable from a source checkout, without installation.

The repository keeps the kernels in a top-level ``kernels/`` folder that installs as
``fusedres.kernels`` (pyproject's package-dir).  Run from a checkout (``PYTHONPATH=.`` or
``python -m fusedres`` in the repository root), nothing maps that folder, so it is loaded
here from beside this package.  The checkout's own folder wins over an editable install of
another checkout, so a second worktree tests its own kernels.  An installed wheel has a real
``fusedres/kernels`` subpackage and no sibling folder; nothing happens then.
"""
import importlib.util
import os
import sys

_CHECKOUT_KERNELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "kernels")
# A file only this project's kernels folder has: a stray top-level ``kernels`` package (the
# unrelated PyPI one) next to an installed fusedres must not be picked up.
_MARKER = "fused_conv.py"


def load_kernels_from_checkout() -> None:
    if "fusedres.kernels" in sys.modules:
        return
    if not os.path.isfile(os.path.join(_CHECKOUT_KERNELS, _MARKER)):
        return
    if os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")):
        return  # installed layout
    spec = importlib.util.spec_from_file_location(
        "fusedres.kernels", os.path.join(_CHECKOUT_KERNELS, "__init__.py"),
        submodule_search_locations=[_CHECKOUT_KERNELS])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fusedres.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["fusedres.kernels"]
        raise
    sys.modules["fusedres"].kernels = module  # what a regular submodule import does
