"""kernels/runtime.py: cuDNN's TF32 setting read through either API, and Triton's allocator
for TMA descriptors set without replacing a user's."""
import contextvars

import pytest
import torch
import triton

from fusedres.kernels import runtime


@pytest.mark.parametrize("setting,expected", [
    (("allow_tf32", False), False), (("allow_tf32", True), True),
    (("fp32_precision", "ieee"), False), (("fp32_precision", "tf32"), True)])
def test_tf32_follows_cudnn_through_either_api(setting, expected):
    # The legacy flag resets the newer API to "none"; reading the legacy flag raises once the
    # newer API has set a precision.  (A GPU run caught the first: allow_tf32=False ran TF32.)
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):
        pytest.skip("this torch has no torch.backends.cudnn.conv.fp32_precision")
    api, value = setting
    previous = conv.fp32_precision
    try:
        if api == "allow_tf32":
            torch.backends.cudnn.allow_tf32 = value
        else:
            conv.fp32_precision = value
        assert runtime.cudnn_allows_tf32() is expected
    finally:
        conv.fp32_precision = previous


def test_tma_keeps_a_users_allocator():
    from triton.runtime import _allocation

    def users(size, alignment, stream):
        raise AssertionError("not called here")

    def fresh_thread():  # a new context: Triton's default, the allocator that raises
        assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        runtime.ensure_allocator()
        assert _allocation._allocator.get() is runtime.tma_scratch
        triton.set_allocator(users)
        runtime.ensure_allocator()
        assert _allocation._allocator.get() is users

    contextvars.Context().run(fresh_thread)


def test_device_facts_off_cuda_are_none():
    assert runtime.arch("cpu") is None and runtime.sm_count("cpu") is None


@pytest.mark.gpu
def test_device_facts_on_cuda():
    device = torch.device("cuda")
    major, minor = torch.cuda.get_device_capability(device)
    assert runtime.arch(device) == major * 10 + minor
    properties = torch.cuda.get_device_properties(device)
    assert runtime.sm_count(device) == properties.multi_processor_count
