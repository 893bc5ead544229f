"""Make ``fusedres.kernels`` importable from a source checkout, without installation.

The repository keeps the kernels in a top-level ``kernels/`` folder that installs as
``fusedres.kernels`` (pyproject's package-dir).  Run from a checkout (``PYTHONPATH=.`` or
``python -m fusedres`` in the repository root), nothing maps that folder, so a finder placed
first on ``sys.meta_path`` maps it, and only that name, when it is first imported.  The
checkout's own folder wins over an editable install of another checkout, so a second
worktree tests its own kernels.  An installed wheel has a real ``fusedres/kernels``
subpackage and no sibling folder; nothing is installed then.
"""
import importlib.abc
import importlib.util
import os
import sys

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT_KERNELS = os.path.join(os.path.dirname(_PACKAGE), "kernels")
# A file only this project's kernels folder has: a stray top-level ``kernels`` package (the
# unrelated PyPI one) next to an installed fusedres must not be picked up.
_MARKER = os.path.join("conv", "kernel.py")


class _CheckoutKernels(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "fusedres.kernels":
            return None
        return importlib.util.spec_from_file_location(
            name, os.path.join(_CHECKOUT_KERNELS, "__init__.py"),
            submodule_search_locations=[_CHECKOUT_KERNELS])


def install_checkout_kernels() -> None:
    if os.path.isfile(os.path.join(_PACKAGE, "kernels", "__init__.py")):
        return  # installed layout
    if not os.path.isfile(os.path.join(_CHECKOUT_KERNELS, _MARKER)):
        return
    if not any(isinstance(finder, _CheckoutKernels) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutKernels())
