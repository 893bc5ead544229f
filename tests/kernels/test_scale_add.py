"""The SE / ECA block's last pass, ``act(y * gate + residual)`` (kernels/scale_add/)."""
import pytest
import torch

from fusedres.kernels import scale_add_act

from ..conftest import DEVICE
from ..numerics import assert_close_to_reference, rel_tol

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scale_add_act_matches_float64_and_keeps_nan(dtype):
    y = torch.randn(2, 24, 5, 3, device=DEVICE).to(dtype)
    y = y.contiguous(memory_format=torch.channels_last)
    gate = torch.rand(2, 24, 1, 1, device=DEVICE).to(dtype)
    residual = torch.randn(2, 24, 5, 3, device=DEVICE).to(dtype)  # NCHW: made channels_last
    y[1, 7, 4, 2] = float("nan")
    out = scale_add_act(y, gate, residual)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isnan(out[1, 7, 4, 2]) and torch.isnan(out).sum() == 1
    d = torch.float64
    ref = (y.to(d) * gate.to(d) + residual.to(d)).relu()
    keep = ~torch.isnan(ref)
    assert_close_to_reference(out[keep], ref[keep], rel_tol(dtype), f"scale_add_act {dtype}")
    linear = scale_add_act(y, gate, residual, relu=False)
    ref = y.to(d) * gate.to(d) + residual.to(d)
    keep = ~torch.isnan(ref)
    assert (ref[keep] < 0).any() and torch.isnan(linear[1, 7, 4, 2])
    assert_close_to_reference(linear[keep], ref[keep], rel_tol(dtype), f"no ReLU {dtype}")


def test_scale_add_act_rejects_bad_gate():
    y = torch.randn(1, 8, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="gate must have shape"):
        scale_add_act(y, torch.rand(1, 4, 1, 1, device=DEVICE), y)
