"""Which backends ``conv_bn_act``'s tuner may choose from: the Triton configs always; the
cuDNN backend (kernels/conv/cudnn.py) on CUDA unless ``FUSEDRES_BACKENDS`` names only
``triton`` or the launch runs inside ``triton_only()``."""
import contextlib
import os
import threading

BACKENDS = ("triton", "cudnn")

_local = threading.local()  # .triton_only: inside triton_only() in this thread


def cudnn_allowed() -> bool:
    """Whether the tuner may pick the cuDNN candidate: unless ``FUSEDRES_BACKENDS`` names
    only ``triton`` (a comma-separated subset of ``BACKENDS``; default both), or inside
    ``triton_only()``.  Triton is always a candidate."""
    if getattr(_local, "triton_only", False):
        return False
    names = [n.strip() for n in os.environ.get("FUSEDRES_BACKENDS", "triton,cudnn").split(",")
             if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or "triton" not in names:
        raise ValueError(f"FUSEDRES_BACKENDS={os.environ['FUSEDRES_BACKENDS']!r}: expected a "
                         f"comma-separated subset of {', '.join(BACKENDS)} that includes "
                         f"triton (got {', '.join(unknown) or 'no triton'})")
    return "cudnn" in names


@contextlib.contextmanager
def triton_only():
    """Inside the block, this thread's launches choose among Triton configs only."""
    previous = getattr(_local, "triton_only", False)
    _local.triton_only = True
    try:
        yield
    finally:
        _local.triton_only = previous
