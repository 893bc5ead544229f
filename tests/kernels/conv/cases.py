"""Shared by the conv kernel tests: operands, the float64 reference, a launch that poisons
and guards its output, and the geometries every K walk is checked on.

On a CPU-only machine the kernel runs under Triton's interpreter (tests/conftest.py); on a
GPU, natively.  A test picks a K walk or variant by handing the launcher an explicit
``ConvConfig`` (a ``variant`` function of the base config below), and reads back what ran
from ``record_launches``.
"""
import pytest
import torch
import torch.nn.functional as F

from fusedres.kernels import (INTERPRETED, ConvGeometry, Shortcut, conv_bn_act, pack_weight,
                              record_launches)
from fusedres.kernels.conv import configs

from ...conftest import DEVICE
from ...numerics import assert_close_to_reference, rel_tol

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (name, N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups): every geometry the
# ResNet family uses, at small spatial sizes and real channel counts, and grouped ones whose
# per-group widths are not powers of two (masks decided per group, not per tensor).
GEOMETRIES = [
    ("stem 7x7/s2 C_in=3", 2, 3, 19, 17, 64, 7, 2, 3, 1, 1),
    ("3x3/s1", 2, 64, 9, 9, 64, 3, 1, 1, 1, 1),
    ("3x3/s2", 1, 64, 9, 11, 128, 3, 2, 1, 1, 1),
    ("3x3/s1 dilation 2", 1, 64, 9, 9, 64, 3, 1, 2, 2, 1),
    ("1x1/s1 expand", 3, 64, 7, 5, 256, 1, 1, 0, 1, 1),
    ("1x1/s1 reduce", 1, 256, 7, 7, 64, 1, 1, 0, 1, 1),
    ("1x1/s2 downsample", 1, 256, 9, 9, 512, 1, 2, 0, 1, 1),
    ("grouped 3x3/s1 (resnext 32x4d)", 1, 128, 7, 7, 128, 3, 1, 1, 1, 32),
    ("grouped 3x3/s2 (32 groups of 16)", 1, 512, 7, 7, 512, 3, 2, 1, 1, 32),
    ("grouped 3x3/s1 (4 groups of 24)", 1, 96, 7, 5, 72, 3, 1, 1, 1, 4),
]
# Every geometry that walks K tap by tap (the others take the gathered walk).
TAP_MAJOR = [g for g in GEOMETRIES if g[2] // g[10] >= configs.GATHER_K_BELOW]

# (N, C_in, H, W, C_out, kernel, stride, padding, groups) of the main convolution, and
# (C_s, HS, WS, stride_s) of the 1x1 shortcut fused into it.
SHORTCUT_GEOMETRIES = [
    # Bottleneck's last 1x1 conv with the downsample 1x1/s2 of the block input.
    ((1, 128, 5, 5, 512, 1, 1, 0, 1), (256, 9, 9, 2)),
    # BasicBlock's second 3x3 conv with a 1x1/s2 downsample.
    ((2, 128, 5, 4, 128, 3, 1, 1, 1), (64, 10, 8, 2)),
    # Stride-1 shortcut (layer1 of a Bottleneck network: 64 -> 256 channels).
    ((1, 64, 7, 7, 256, 1, 1, 0, 1), (64, 7, 7, 1)),
    # A grouped convolution (4 groups of 24) with a shortcut into all its 64 outputs.
    ((1, 96, 5, 5, 64, 3, 1, 1, 4), (48, 9, 9, 2)),
]
SHORTCUT_IDS = ["bottleneck", "basic", "stride1", "grouped"]


def operands(n, c_in, h, w, c_out, kernel, groups, dtype):
    x = torch.randn(n, c_in, h, w, device=DEVICE).to(dtype)
    weight = (torch.randn(c_out, c_in // groups, kernel, kernel, device=DEVICE)
              / (c_in // groups * kernel * kernel) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device=DEVICE)
    return x, weight, bias


def reference(x, w, b, stride, padding, dilation, groups, residual=None, shortcut=None,
              relu=True, shortcut_pool=False):
    """Float64 reference from the operands the kernel actually sees (already rounded)."""
    d = torch.float64
    ref = F.conv2d(x.to(d), w.to(d), b.to(d), stride, padding, dilation, groups)
    if shortcut is not None:
        xs, ws, stride_s = shortcut
        xs = xs.to(d)
        if shortcut_pool:
            xs = F.avg_pool2d(xs, 2, 2, ceil_mode=True, count_include_pad=False)
            stride_s = 1
        ref = ref + F.conv2d(xs, ws.to(d), None, stride_s)
    if residual is not None:
        ref = ref + residual.to(d)
    return ref.relu() if relu else ref


def base_config(m, consts, element_size):
    """What a test's variant starts from: the interpreter's config, or the GPU default."""
    if INTERPRETED:
        return configs.interpreter_config(m, consts)
    return configs.default_config(m, consts, element_size)


def launch(x, w, b, *, kernel, stride, padding, dilation=1, groups=1, relu=True,
           residual=None, shortcut=None, shortcut_pool=False, variant=None):
    """``conv_bn_act`` on unpacked weights into a NaN-poisoned output that sits between
    NaN-filled guard regions of a whole tile's size, so an element the kernel fails to write
    and a store outside the output both fail the test (instead of corrupting memory).
    ``variant(base_config, consts)`` picks the config (None: the launcher's own choice).
    Returns the output and the launches it recorded."""
    n, c_in, h, wd = x.shape
    c_out = w.shape[0]
    short = None
    packed_shortcut = None
    if shortcut is not None:
        xs, ws, stride_s = shortcut
        packed_shortcut = (xs, pack_weight(ws, x.dtype), stride_s)
        short = Shortcut(*xs.shape[1:], stride_s, shortcut_pool)
    geometry = ConvGeometry(n, c_in, h, wd, c_out, (kernel, kernel), stride, padding, dilation,
                            groups, relu, residual is not None, short, x.dtype)
    _, _, oh, ow = geometry.output_shape
    guard = 128 * c_out + 128
    buffer = torch.full((n * oh * ow * c_out + 2 * guard,), float("nan"), dtype=x.dtype,
                        device=x.device)
    out = buffer[guard:guard + n * oh * ow * c_out].view(n, oh, ow, c_out).permute(0, 3, 1, 2)
    config = None
    if variant is not None:
        ints, consts = geometry.scalars(False, INTERPRETED)
        config = variant(base_config(ints["M"], consts, x.dtype.itemsize), consts)
    with record_launches() as launches:
        result = conv_bn_act(x, pack_weight(w, x.dtype), b.float(), kernel_size=kernel,
                             stride=stride, padding=padding, dilation=dilation, groups=groups,
                             relu=relu, residual=residual, shortcut=packed_shortcut,
                             shortcut_pool=shortcut_pool, out=out, allow_tf32=False,
                             config=config)
    assert result.data_ptr() == out.data_ptr()
    outside = torch.cat([buffer[:guard], buffer[-guard:]])
    assert outside.isnan().all(), \
        f"the kernel wrote {(~outside.isnan()).sum().item()} elements outside its output"
    return result, launches


def check_geometry(geometry, dtype, epilogue, variant=None):
    """One GEOMETRIES entry against float64; returns the launches it recorded."""
    _, n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups = geometry
    x, weight, bias = operands(n, c_in, h, w, c_out, kernel, groups, dtype)
    relu = epilogue != "none"
    ref = reference(x, weight, bias, stride, padding, dilation, groups, relu=False)
    residual = torch.randn_like(ref).to(dtype) if "residual" in epilogue else None
    ref = reference(x, weight, bias, stride, padding, dilation, groups, residual, relu=relu)
    out, launches = launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding,
                           dilation=dilation, groups=groups, relu=relu, residual=residual,
                           variant=variant)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, ref, rel_tol(dtype), f"{geometry[0]} {dtype} {epilogue}")
    return launches


def check_shortcut(main, shortcut_geometry, dtype, variant=None):
    """One SHORTCUT_GEOMETRIES entry against float64; returns the launches it recorded."""
    n, c_in, h, w, c_out, kernel, stride, padding, groups = main
    c_s, hs, ws_, stride_s = shortcut_geometry
    x, weight, bias = operands(n, c_in, h, w, c_out, kernel, groups, dtype)
    xs = torch.randn(n, c_s, hs, ws_, device=DEVICE).to(dtype)
    w_short = (torch.randn(c_out, c_s, 1, 1, device=DEVICE) / c_s ** 0.5).to(dtype)
    ref = reference(x, weight, bias, stride, padding, 1, groups, shortcut=(xs, w_short, stride_s))
    out, launches = launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding,
                           groups=groups, shortcut=(xs, w_short, stride_s), variant=variant)
    assert_close_to_reference(out, ref, rel_tol(dtype), f"shortcut {dtype}")
    return launches


def check_pooled_shortcut(hs, ws, dtype, kernel=1, c_in=32, c_out=64, variant=None):
    """ResNet-D's pooled shortcut of an ``hs`` x ``ws`` input against float64; returns the
    launches it recorded."""
    n, c_s = 2, 48
    oh, ow = -(-hs // 2), -(-ws // 2)
    x = torch.randn(n, c_in, oh, ow, device=DEVICE).to(dtype)
    w = (torch.randn(c_out, c_in, kernel, kernel, device=DEVICE)
         / (c_in * kernel * kernel) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device=DEVICE)
    xs = torch.randn(n, c_s, hs, ws, device=DEVICE).to(dtype)
    w_s = (torch.randn(c_out, c_s, 1, 1, device=DEVICE) / c_s ** 0.5).to(dtype)
    shortcut = (xs, w_s, 2)
    ref = reference(x, w, bias, 1, kernel // 2, 1, 1, shortcut=shortcut, shortcut_pool=True)
    out, launches = launch(x, w, bias, kernel=kernel, stride=1, padding=kernel // 2,
                           shortcut=shortcut, shortcut_pool=True, variant=variant)
    assert_close_to_reference(out, ref, rel_tol(dtype), f"pooled shortcut {hs}x{ws} {dtype}")
    assert [launch.constexprs["SHORTCUT_POOL"] for launch in launches] == [True]
    return launches


def assert_special_values_match(out, ref, tol, what):
    """NaN and Inf exactly where the float64 reference has them; the rest within ``tol``."""
    out, ref = out.cpu().double(), ref.cpu()
    assert (ref.isnan() | ref.isinf()).any(), f"{what}: the reference has no NaN or Inf"
    assert torch.equal(out.isnan(), ref.isnan()), what
    assert torch.equal(out.isinf(), ref.isinf()), what
    finite = ref.isfinite()
    assert_close_to_reference(out[finite], ref[finite], tol, what)


def check_nan_and_inf(where, variant):
    """Masked loads fill with 0 only outside the tensors (padding, partial tiles): a real NaN
    or Inf in any operand must reach the output, and padding must not create one."""
    x, weight, bias = operands(1, 64, 7, 6, 128, 3, 1, torch.float32)
    xs = torch.randn(1, 32, 13, 11, device=DEVICE)
    w_short = torch.randn(128, 32, 1, 1, device=DEVICE) / 32 ** 0.5
    residual = torch.randn(1, 128, 7, 6, device=DEVICE)
    if where == "input":
        x[0, 5, 3, 2], x[0, 9, 0, 5] = float("nan"), float("inf")
    elif where == "shortcut input":
        xs[0, 7, 4, 6], xs[0, 1, 12, 10] = float("nan"), -float("inf")
    elif where == "residual":
        residual[0, 100, 6, 0] = float("nan")
    else:  # a corner pixel: its padded neighbours are outside the image
        x[0, 3, 0, 0] = float("inf")
    ref = reference(x, weight, bias, 1, 1, 1, 1, residual, (xs, w_short, 2))
    out, launches = launch(x, weight, bias, kernel=3, stride=1, padding=1, relu=True,
                           residual=residual, shortcut=(xs, w_short, 2), variant=variant)
    assert_special_values_match(out, ref, 1e-4, where)
    return launches


def needs_sm_90():
    if DEVICE.type == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90")


def tma_config(base, consts, patch_pixels=128):
    """TMA tiles where the launch can take them (else ``base``): the interpreter's tile with
    TMA loads (patch tiles of at most ``patch_pixels`` for 3x3), on a GPU the first TMA
    candidate (its patch cut to ``patch_pixels``)."""
    if not configs.uses_tma(consts, 2):
        return base
    if not INTERPRETED:
        listed = configs.tma_candidates(consts, 2)
        if not listed:
            pytest.skip("no TMA candidate on sm_90 for this launch (a single K step)")
        base = listed[0]
    config = base._replace(tma=True)
    if configs.is_gemm(consts):
        return config
    block_m, patch_w = configs.patch_tile(consts["OH"], consts["OW"], patch_pixels)
    return config._replace(block_m=block_m, block_k=configs.TMA_BLOCK_K, swap_ab=True,
                           patch_w=patch_w)
