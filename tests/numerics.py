"""Float64 references and dtype-aware comparisons."""
import torch
from torch import nn

# Relative Frobenius error allowed against a float64 reference computed from the same
# (already rounded) operands: what is left is accumulation order and output rounding.
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
# TF32 rounds operands to a 10-bit mantissa, like fp16.
REL_TOL_TF32 = 2e-3


def rel_tol(dtype, tf32=False):
    return REL_TOL_TF32 if (dtype == torch.float32 and tf32) else REL_TOL[dtype]


def model_tol(tf32=False):
    """Whole fp32 models (about 50 layers deep) against float64 eager."""
    return 1e-2 if tf32 else 1e-4


# Whole half-precision models against float64 eager with the same rounded weights:
# (relative Frobenius error, worst element / largest reference value).  Measured on
# 2026-11-28 over 4 seeds (input 2x3x31x29, random BN statistics): ResNet-18 fp16 at most
# 5.8e-4 and 6.4e-4, ResNet-50 bf16 at most 4.0e-2 and 4.3e-2.  About 4x that; fp16 has
# more room because ResNet-50 fp16 (GPU autocast) is deeper than what was measured.
MODEL_HALF_TOL = {torch.float16: (4e-3, 5e-3), torch.bfloat16: (0.16, 0.18)}


def assert_close_to_reference(out, ref, tol, what="", element_tol=None):
    """``out`` (any dtype) against a float64 ``ref``: no NaN or Inf, relative Frobenius error
    below ``tol``, and no single element off by more than ``element_tol`` (default 10*tol)
    of the largest reference value (catches a few wrong elements hidden in a large norm)."""
    element_tol = 10 * tol if element_tol is None else element_tol
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out = out.detach().to(device="cpu", dtype=torch.float64)
    ref = ref.detach().to(device="cpu", dtype=torch.float64)
    assert torch.isfinite(out).all(), f"{what}: output has {(~torch.isfinite(out)).sum()} NaN/Inf"
    scale = ref.norm().clamp_min(1e-30)
    rel = ((out - ref).norm() / scale).item()
    worst = (out - ref).abs().max().item()
    peak = ref.abs().max().clamp_min(1e-30).item()
    assert rel <= tol, f"{what}: relative error {rel:.3e} > {tol:.1e}"
    assert worst <= element_tol * peak, \
        f"{what}: max abs error {worst:.3e} > {element_tol:.1e} * {peak:.3e}"
    return rel


def randomize_bn(model: nn.Module) -> nn.Module:
    """BatchNorm statistics far from the identity: non-zero means, variances from 0.2 to 5,
    gamma around 1 with spread, non-zero beta."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.2, 5.0)
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return model


def conv_bn_pair(c_in, c_out, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=False):
    conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, dilation, groups, bias=bias)
    return conv, randomize_bn(nn.BatchNorm2d(c_out))
