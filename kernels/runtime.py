"""What the kernels need to know about where they run: the interpreter, the device's SMs and
architecture, cuDNN's TF32 setting, and Triton's allocator for TMA descriptors."""
import os
import threading

import torch
import triton


def _triton_interprets() -> bool:
    """Triton's own reading of TRITON_INTERPRET (it accepts 1/true/on/yes), so that this module
    and triton.jit, which hands out interpreted functions exactly when it is set at import,
    never disagree."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


INTERPRETED = _triton_interprets()

# Triton's interpreter swaps triton.language's functions for its own while a kernel runs,
# process-wide, so two threads interpreting at once break each other: one launch at a time.
INTERPRETER_LOCK = threading.Lock()


def arch(device):
    """90 for sm_90, 80 for sm_80, ...; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def sm_count(device):
    """The device's streaming multiprocessors; None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def cudnn_allows_tf32() -> bool:
    """Whether eager cuDNN convolutions round fp32 to TF32 now.

    ``allow_tf32`` first: it is what most code sets, setting it resets the newer per-operator
    ``fp32_precision`` to "none" (inherit), and torch.compile can trace the read.  Once the
    newer API has set a precision, torch refuses the ``allow_tf32`` read; then the
    convolution's ``fp32_precision`` decides, inherited from cuDNN's and the global one while
    "none"."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        pass
    for precision in (torch.backends.cudnn.conv.fp32_precision,
                      getattr(torch.backends.cudnn, "fp32_precision", "none"),
                      getattr(torch.backends, "fp32_precision", "none")):
        if precision != "none":
            return precision == "tf32"
    return False


def ensure_allocator():
    """Give Triton an allocator for in-kernel descriptors' scratch unless one is set: a user's
    own allocator is kept.  Triton keeps it in a ContextVar, so each thread sets its own.
    (Triton has no public getter: where its private one is missing, set ours.)"""
    from triton.runtime import _allocation
    current = getattr(_allocation, "_allocator", None)
    null = getattr(_allocation, "NullAllocator", None)
    if current is None or null is None or isinstance(current.get(), null):
        triton.set_allocator(tma_scratch)


def tma_scratch(size, alignment, stream):
    """fusedres' allocator for TMA descriptors' global scratch."""
    return torch.empty(size, dtype=torch.int8, device="cuda")
