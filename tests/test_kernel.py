"""The conv_bn_act kernel against float64 F.conv2d, through its launcher.

On a CPU-only machine this runs the Triton kernel under the interpreter (tests/conftest.py);
on a GPU, natively.  Outputs are poisoned with NaN before every launch, so an element the
kernel fails to write fails the test.
"""

import os

import pytest
import torch
import torch.nn.functional as F
import triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusedres.kernels import conv_bn_act, conv_output_size, pack_weight

from .conftest import DEVICE
from .numerics import assert_close_to_reference, rel_tol

# The kernel module itself: the package re-exports its launcher under the same name.
from fusedres.kernels import fused_conv as kernel_module
from fusedres.kernels import autotune

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (name, N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups): every geometry the
# ResNet family uses, at small spatial sizes and real channel counts.
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
]


def _reference(x, w, b, stride, padding, dilation, groups, residual=None, shortcut=None,
               relu=True):
    """Float64 reference from the operands the kernel actually sees (already rounded)."""
    d = torch.float64
    ref = F.conv2d(x.to(d), w.to(d), b.to(d), stride, padding, dilation, groups)
    if shortcut is not None:
        xs, ws, stride_s = shortcut
        ref = ref + F.conv2d(xs.to(d), ws.to(d), None, stride_s)
    if residual is not None:
        ref = ref + residual.to(d)
    return ref.relu() if relu else ref


def _launch(x, w, b, *, kernel, stride, padding, dilation, groups, relu, residual=None,
            shortcut=None):
    n, _, h, wd = x.shape
    oh = conv_output_size(h, kernel, stride, padding, dilation)
    ow = conv_output_size(wd, kernel, stride, padding, dilation)
    out = torch.full((n, w.shape[0], oh, ow), float("nan"), dtype=x.dtype, device=x.device)
    out = out.contiguous(memory_format=torch.channels_last)
    packed_shortcut = None
    if shortcut is not None:
        xs, ws, stride_s = shortcut
        packed_shortcut = (xs, pack_weight(ws, x.dtype), stride_s)
    result = conv_bn_act(x, pack_weight(w, x.dtype), b.float(), kernel_size=kernel,
                         stride=stride, padding=padding, dilation=dilation, groups=groups,
                         relu=relu, residual=residual, shortcut=packed_shortcut, out=out,
                         allow_tf32=False)
    assert result.data_ptr() == out.data_ptr()
    return result


def _operands(n, c_in, h, w, c_out, kernel, groups, dtype):
    x = torch.randn(n, c_in, h, w, device=DEVICE).to(dtype)
    weight = (torch.randn(c_out, c_in // groups, kernel, kernel, device=DEVICE)
              / (c_in // groups * kernel * kernel) ** 0.5).to(dtype)
    bias = torch.randn(c_out, device=DEVICE)
    return x, weight, bias


@pytest.fixture(params=[True, False], ids=["lean_k", "classic_k"])
def k_loop(request, monkeypatch):
    """Runs a test with each K loop of the kernel: under the interpreter through its config,
    on a GPU by replacing the tuner's pick with the default tile in that variant."""
    lean = request.param
    monkeypatch.setattr(kernel_module, "INTERPRETER_LEAN_K", lean)
    default = kernel_module.choose_config

    def forced(ints, consts, dtype, launch, device):
        config = default(ints, consts, dtype, launch, device)
        return triton.Config({**config.kwargs, "LEAN_K": lean}, num_warps=config.num_warps,
                             num_stages=config.num_stages)

    monkeypatch.setattr(kernel_module, "choose_config", forced)
    return lean


@pytest.fixture
def split_k(monkeypatch):
    """Runs a test with split-K: up to INTERPRETER_SPLIT_K (3 unless a test sets it) slices
    of BLOCK_K=16 steps, under the interpreter through its config, on a GPU on the default
    tile.  Yields the slice count of every split launch (each runs the split-K epilogue kernel
    once), so a test can check that K was really split."""
    monkeypatch.setattr(kernel_module, "INTERPRETER_SPLIT_K", 3)
    default = kernel_module.choose_config

    def forced(ints, consts, dtype, launch, device):
        config = default(ints, consts, dtype, launch, device)
        steps = kernel_module.k_steps(consts, 16)
        return triton.Config({**config.kwargs, "BLOCK_K": 16, "LEAN_K": True,
                              "SPLIT_K": min(steps, kernel_module.INTERPRETER_SPLIT_K)},
                             num_warps=config.num_warps, num_stages=config.num_stages)

    monkeypatch.setattr(kernel_module, "choose_config", forced)
    slices = []
    epilogue = kernel_module._split_k_epilogue

    def counting(part, *args):
        slices.append(part.shape[0])
        return epilogue(part, *args)

    monkeypatch.setattr(kernel_module, "_split_k_epilogue", counting)
    return slices


# (N, C_in, H, W, C_out, kernel, stride, padding, groups) of the main convolution, and
# (C_s, HS, WS, stride_s) of the 1x1 shortcut fused into it.
SHORTCUT_GEOMETRIES = [
    # Bottleneck's last 1x1 conv with the downsample 1x1/s2 of the block input.
    ((1, 128, 5, 5, 512, 1, 1, 0, 1), (256, 9, 9, 2)),
    # BasicBlock's second 3x3 conv with a 1x1/s2 downsample.
    ((2, 128, 5, 4, 128, 3, 1, 1, 1), (64, 10, 8, 2)),
    # Stride-1 shortcut (layer1 of a Bottleneck network: 64 -> 256 channels).
    ((1, 64, 7, 7, 256, 1, 1, 0, 1), (64, 7, 7, 1)),
]

# Every geometry that walks K tap by tap (split-K does not apply to the gathered walk).
TAP_MAJOR = [g for g in GEOMETRIES if g[2] // g[10] >= kernel_module.GATHER_K_BELOW]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", TAP_MAJOR, ids=[g[0] for g in TAP_MAJOR])
@pytest.mark.parametrize("epilogue", ["residual+relu", "none"])
def test_split_k_matches_float64(geometry, dtype, epilogue, split_k):
    if geometry[10] > 1 and dtype != torch.float16:
        pytest.skip("grouped geometries: fp16 only (the interpreter is slow on them)")
    _check_geometry(geometry, dtype, epilogue)
    assert len(split_k) == 1 and split_k[0] > 1


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("main,shortcut_geometry", SHORTCUT_GEOMETRIES,
                         ids=["bottleneck", "basic", "stride1"])
def test_split_k_with_shortcut_matches_float64(main, shortcut_geometry, dtype, split_k):
    # The slices cover the main loop's steps and then the shortcut's: some slice holds both.
    _check_shortcut(main, shortcut_geometry, dtype)
    assert len(split_k) == 1 and split_k[0] > 1


def test_split_k_is_deterministic(split_k):
    x, weight, bias = _operands(1, 64, 7, 7, 128, 3, 1, torch.float16)
    first = _launch(x, weight, bias, kernel=3, stride=1, padding=1, dilation=1, groups=1,
                    relu=True)
    second = _launch(x, weight, bias, kernel=3, stride=1, padding=1, dilation=1, groups=1,
                     relu=True)
    assert split_k == [3, 3] and torch.equal(first, second)


@pytest.fixture
def tma(monkeypatch):
    """Runs a test with TMA tiles where a launch can take them: under the interpreter through
    its config, on an sm_90 GPU by forcing the TMA candidate.  Yields one entry per launch
    that ran them."""
    monkeypatch.setattr(kernel_module, "INTERPRETER_TMA", True)
    if DEVICE.type == "cuda":
        if torch.cuda.get_device_capability()[0] < 9:
            pytest.skip("TMA needs sm_90")

        def forced(ints, consts, dtype, launch, device):
            listed = kernel_module.tma_candidates(consts, dtype.itemsize)
            if not listed:  # the interpreter runs TMA there; a GPU lists no TMA tile
                pytest.skip("no TMA candidate on sm_90 for this launch (a single K step)")
            return listed[0]

        monkeypatch.setattr(kernel_module, "choose_config", forced)
    used = []
    ready = kernel_module._tma_ready

    def recording(x, weight):
        result = ready(x, weight)
        if result:
            used.append(1)
        return result

    monkeypatch.setattr(kernel_module, "_tma_ready", recording)
    return used


def _record_launches(monkeypatch, record):
    """Wraps the kernel so that ``record`` sees the constexprs of every launch; returns the
    list of what it returned, None left out."""
    seen = []
    launch = kernel_module.conv_bn_act_kernel

    class Recording:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                value = record(kwargs)
                if value is not None:
                    seen.append(value)
                return launch[grid](*args, **kwargs)
            return run

    monkeypatch.setattr(kernel_module, "conv_bn_act_kernel", Recording())
    return seen


@pytest.fixture
def patches(monkeypatch, tma):
    """With ``tma``: yields (PATCH_W, SWAP_AB, USE_TMA) of every launch that ran patch tiles."""
    return _record_launches(monkeypatch, lambda kw: (
        kw["PATCH_W"], kw.get("SWAP_AB"), kw.get("USE_TMA", False)) if kw.get("PATCH_W") else None)


# The 1x1 stride-1 geometries, which can take TMA tiles; the last has channel counts that
# are not powers of two (tiles past the tensor's end are zero-filled by TMA).
ONE_BY_ONE = [g for g in GEOMETRIES if g[6] == 1 and g[7] == 1] + [
    ("1x1/s1 odd channels", 2, 72, 5, 5, 40, 1, 1, 0, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", ONE_BY_ONE, ids=[g[0] for g in ONE_BY_ONE])
@pytest.mark.parametrize("epilogue", ["residual+relu", "none"])
def test_tma_matches_float64(geometry, dtype, epilogue, tma):
    _check_geometry(geometry, dtype, epilogue)
    assert tma == [1]


@pytest.mark.parametrize("where", ["input", "shortcut input", "residual"])
def test_tma_with_shortcut_keeps_nan_and_inf(where, tma):
    # A Bottleneck's last 1x1/s1 convolution (TMA; 128 input channels, so that sm_90 lists a
    # TMA tile) with a 1x1/s1 shortcut of 64 channels, as in layer1's first block.
    x, weight, bias = _operands(1, 128, 7, 6, 256, 1, 1, torch.float16)
    xs = torch.randn(1, 64, 7, 6, device=DEVICE).to(torch.float16)
    w_short = (torch.randn(256, 64, 1, 1, device=DEVICE) / 8).to(torch.float16)
    residual = torch.randn(1, 256, 7, 6, device=DEVICE).to(torch.float16)
    if where == "input":
        x[0, 5, 3, 2], x[0, 9, 0, 5] = float("nan"), float("inf")
    elif where == "shortcut input":
        xs[0, 7, 4, 5], xs[0, 1, 6, 0] = float("nan"), -float("inf")
    else:
        residual[0, 100, 6, 0] = float("nan")
    ref = _reference(x, weight, bias, 1, 0, 1, 1, residual, (xs, w_short, 1))
    out = _launch(x, weight, bias, kernel=1, stride=1, padding=0, dilation=1, groups=1,
                  relu=True, residual=residual, shortcut=(xs, w_short, 1))
    assert tma == [1]
    out, ref = out.cpu().double(), ref.cpu()
    assert (ref.isnan() | ref.isinf()).any()
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    finite = ref.isfinite()
    assert_close_to_reference(out[finite], ref[finite], rel_tol(torch.float16), "TMA shortcut")


@pytest.mark.parametrize("kernel,c_out", [(1, 128), (3, 72)], ids=["1x1 rows", "3x3 patches"])
def test_tma_falls_back_to_pointers_for_a_misaligned_input(kernel, c_out, tma, patches):
    # A channels_last view 2 bytes into its storage: no TMA descriptor may point there.  The
    # 3x3 launch keeps its patch tiles and transposed tile, loaded by pointers (masks for the
    # padding).
    n, c, h, w = 1, 128, 6, 7
    storage = torch.randn(n * h * w * c + 1, device=DEVICE).to(torch.float16)
    x = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16
    weight = (torch.randn(c_out, c, kernel, kernel, device=DEVICE) / (12 * kernel)).half()
    bias = torch.randn(c_out, device=DEVICE)
    out = _launch(x, weight, bias, kernel=kernel, stride=1, padding=kernel // 2, dilation=1,
                  groups=1, relu=True)
    assert tma == []
    assert [p[1:] for p in patches] == ([(True, False)] if kernel == 3 else [])
    assert_close_to_reference(out, _reference(x, weight, bias, 1, kernel // 2, 1, 1),
                              rel_tol(torch.float16), f"misaligned {kernel}x{kernel}")


# The 3x3 stride-1 geometries, which take TMA patch tiles (C_in a multiple of 64): image
# sizes that leave partial patches, output channels that leave a partial tile, dilation.
PATCHED = [g for g in GEOMETRIES if g[6] == 3 and g[7] == 1 and g[10] == 1] + [
    ("3x3/s1 odd sizes", 2, 128, 5, 11, 40, 3, 1, 1, 1, 1),
    ("3x3/s1 7x7 (layer4)", 1, 64, 7, 7, 136, 3, 1, 1, 1, 1),
    ("3x3/s1 one row", 1, 64, 1, 13, 64, 3, 1, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", PATCHED, ids=[g[0] for g in PATCHED])
@pytest.mark.parametrize("epilogue", ["residual+relu", "none"])
def test_tma_patches_match_float64(geometry, dtype, epilogue, patches):
    # TMA's zero fill (negative coordinates included) is the padding: the border pixels of
    # every patch check it.
    _check_geometry(geometry, dtype, epilogue)
    assert len(patches) == 1 and patches[0][1:] == (True, True)


@pytest.mark.parametrize("where", ["corner", "edge", "shortcut input", "residual"])
def test_tma_patches_with_shortcut_keep_nan_and_inf(where, patches):
    # A BasicBlock's second 3x3/s1 convolution with the 1x1/s2 downsample fused (ResNet-18's
    # layer2): a NaN or Inf at the border must reach exactly the outputs whose window holds it.
    x, weight, bias = _operands(2, 128, 6, 5, 128, 3, 1, torch.float16)
    xs = torch.randn(2, 64, 12, 10, device=DEVICE).to(torch.float16)
    w_short = (torch.randn(128, 64, 1, 1, device=DEVICE) / 8).to(torch.float16)
    residual = None
    if where == "corner":
        x[1, 5, 0, 0], x[0, 70, 5, 4] = float("nan"), float("inf")
    elif where == "edge":
        x[0, 3, 2, 4], x[1, 127, 5, 2] = -float("inf"), float("nan")
    elif where == "shortcut input":
        xs[0, 7, 10, 8], xs[1, 1, 0, 0] = float("nan"), -float("inf")
    else:
        residual = torch.randn(2, 128, 6, 5, device=DEVICE).to(torch.float16)
        residual[1, 100, 5, 4] = float("nan")
    ref = _reference(x, weight, bias, 1, 1, 1, 1, residual, (xs, w_short, 2))
    out = _launch(x, weight, bias, kernel=3, stride=1, padding=1, dilation=1, groups=1,
                  relu=True, residual=residual, shortcut=(xs, w_short, 2))
    assert len(patches) == 1 and patches[0][1:] == (True, True)
    out, ref = out.cpu().double(), ref.cpu()
    assert (ref.isnan() | ref.isinf()).any()
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    finite = ref.isfinite()
    assert_close_to_reference(out[finite], ref[finite], rel_tol(torch.float16), "TMA patches")


def test_tma_patches_cut_a_long_row(patches, monkeypatch):
    # Patches narrower than the row (here 32 of 37 pixels, then 5): the program's patch column
    # comes from its id, and the last patch hangs over the row's end.
    monkeypatch.setattr(kernel_module, "INTERPRETER_PATCH_PIXELS", 32)
    _check_geometry(("3x3/s1 long rows", 1, 64, 3, 37, 64, 3, 1, 1, 1, 1), torch.float16,
                    "residual+relu")
    if DEVICE.type == "cpu":
        assert patches == [(32, True, True)]


@pytest.mark.gpu
@pytest.mark.parametrize("geometry", PATCHED, ids=[g[0] for g in PATCHED])
def test_every_tma_candidate_on_sm_90(geometry, monkeypatch):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90")
    for index in range(2):
        def forced(ints, consts, dtype, launch, device, index=index):
            listed = kernel_module.tma_candidates(consts, dtype.itemsize)
            return listed[min(index, len(listed) - 1)]

        monkeypatch.setattr(kernel_module, "choose_config", forced)
        _check_geometry(geometry, torch.float16, "residual+relu")


def test_tma_keeps_a_users_allocator():
    import contextvars
    from triton.runtime import _allocation

    def users(size, alignment, stream):
        raise AssertionError("not called here")

    def fresh_thread():  # a new context: Triton's default, the allocator that raises
        assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        kernel_module.ensure_allocator()
        assert _allocation._allocator.get() is kernel_module._tma_scratch
        triton.set_allocator(users)
        kernel_module.ensure_allocator()
        assert _allocation._allocator.get() is users

    contextvars.Context().run(fresh_thread)


def test_tma_candidates_only_where_they_apply():
    from fusedres import gpu_inspect
    for model in ("resnet18", "resnet50"):
        for spec in gpu_inspect.specialisations(model, torch.float16, 256):
            ints, consts = kernel_module.launch_scalars(**spec._asdict(), allow_tf32=False,
                                                        interpreted=False)
            # 1x1 stride 1 with at least two K steps of 64 channels: one; 3x3 stride 1 (not
            # the stem): the 128x64 patch tile and, with 128 output channels or more, 64x128.
            one_by_one = spec.kernel_size == (1, 1) and spec.stride == 1 and spec.c_in >= 128
            three = spec.kernel_size == (3, 3) and spec.stride == 1
            on_90 = kernel_module.candidates(consts, 2, ints["M"], 90)
            tma = [c.kwargs for c in on_90 if c.kwargs.get("USE_TMA")]
            assert len(tma) == (one_by_one + three * (1 + (spec.c_out >= 128)))
            for kw in tma:
                assert kw.get("SWAP_AB", False) is three
                if three:
                    assert kw["PATCH_W"] == min(64, triton.next_power_of_2(consts["OW"]))
                    # No patch row below the image: at 7x7 an 8x8 patch.
                    assert kw["BLOCK_M"] // kw["PATCH_W"] <= triton.next_power_of_2(consts["OH"])
            assert not any(c.kwargs.get("USE_TMA")
                           for arch in (80, None)
                           for c in kernel_module.candidates(consts, 2, ints["M"], arch))
            assert not any(c.kwargs.get("USE_TMA") for c in kernel_module.candidates(
                consts, 4, ints["M"], 90))


@pytest.fixture
def strip_k(monkeypatch):
    """Runs a test with the stem's strip K walk where a launch can take it (under the
    interpreter through its config, on a GPU by forcing the first strip candidate).  Yields
    the BLOCK_K of every launch that ran it."""
    monkeypatch.setattr(kernel_module, "INTERPRETER_STRIP_K", True)
    if DEVICE.type == "cuda":
        monkeypatch.setattr(kernel_module, "choose_config",
                            lambda ints, consts, *_: kernel_module._without(
                                kernel_module.strip_candidates(consts)[0], "PAD_C"))
    return _record_launches(monkeypatch, lambda kw: kw["BLOCK_K"] if kw.get("STRIP_K") else None)


# (name, N, C_in, H, W, C_out, kernel, stride, padding): the stem and other small-channel
# convolutions whose filter rows fit one strip.
STRIP_GEOMETRIES = [
    ("stem 7x7/s2 C_in=3", 2, 3, 19, 17, 64, 7, 2, 3),
    ("7x7/s2 odd C_out", 1, 3, 12, 15, 24, 7, 2, 3),
    ("5x5/s1 C_in=1 no padding", 3, 1, 9, 8, 16, 5, 1, 0),
    ("3x3/s3 C_in=5 padding 2", 1, 5, 10, 11, 32, 3, 3, 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", STRIP_GEOMETRIES, ids=[g[0] for g in STRIP_GEOMETRIES])
@pytest.mark.parametrize("epilogue", ["residual+relu", "none"])
def test_strip_k_matches_float64(geometry, dtype, epilogue, strip_k):
    _, n, c_in, h, w, c_out, kernel, stride, padding = geometry
    x, weight, bias = _operands(n, c_in, h, w, c_out, kernel, 1, dtype)
    relu = epilogue != "none"
    ref = _reference(x, weight, bias, stride, padding, 1, 1, relu=False)
    residual = torch.randn_like(ref).to(dtype) if "residual" in epilogue else None
    ref = _reference(x, weight, bias, stride, padding, 1, 1, residual, relu=relu)
    out = _launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding, dilation=1,
                  groups=1, relu=relu, residual=residual)
    assert len(strip_k) == 1 and strip_k[0] >= kernel * c_in
    assert_close_to_reference(out, ref, rel_tol(dtype), f"strip {geometry[0]} {dtype}")


@pytest.fixture
def pad_c(monkeypatch, strip_k):
    """The strip walk over the 3-channel input padded to 4 channels by the launcher."""
    monkeypatch.setattr(kernel_module, "INTERPRETER_PAD_C", True)
    if DEVICE.type == "cuda":
        monkeypatch.setattr(kernel_module, "choose_config", lambda ints, consts, *_: next(
            c for c in kernel_module.strip_candidates(consts) if c.kwargs.get("PAD_C")))
    return strip_k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", STRIP_GEOMETRIES[:2], ids=[g[0] for g in STRIP_GEOMETRIES[:2]])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_padded_stem_matches_float64(geometry, dtype, layout, pad_c):
    _, n, c_in, h, w, c_out, kernel, stride, padding = geometry
    x, weight, bias = _operands(n, c_in, h, w, c_out, kernel, 1, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ref = _reference(x, weight, bias, stride, padding, 1, 1, relu=False)
    residual = torch.randn_like(ref).to(dtype)
    ref = _reference(x, weight, bias, stride, padding, 1, 1, residual, relu=True)
    out = _launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding, dilation=1,
                  groups=1, relu=True, residual=residual)
    assert pad_c == [32]  # one strip of 7 taps x 4 channels per filter row
    assert_close_to_reference(out, ref, rel_tol(dtype), f"padded stem {dtype}")


def test_pad_channels_appends_zero_channels():
    x = torch.randn(2, 3, 5, 4)
    weight = pack_weight(torch.randn(8, 3, 7, 7), torch.float32)
    xp, wp = kernel_module.pad_channels(x, weight, 4, 49)
    assert xp.shape == (2, 4, 5, 4) and xp.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xp[:, :3], x) and not xp[:, 3].any()
    assert wp.shape == (49 * 4, 8)
    assert torch.equal(wp.view(49, 4, 8)[:, :3], weight.view(49, 3, 8))
    assert not wp.view(49, 4, 8)[:, 3].any()


def test_strip_k_keeps_nan_and_inf_at_the_border(strip_k):
    x, weight, bias = _operands(1, 3, 13, 11, 64, 7, 1, torch.float32)
    x[0, 0, 0, 0], x[0, 2, 12, 10], x[0, 1, 6, 5] = float("inf"), float("nan"), -float("inf")
    ref = _reference(x, weight, bias, 2, 3, 1, 1)
    out = _launch(x, weight, bias, kernel=7, stride=2, padding=3, dilation=1, groups=1,
                  relu=True)
    assert len(strip_k) == 1
    out, ref = out.cpu().double(), ref.cpu()
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())
    finite = ref.isfinite()
    assert torch.allclose(out[finite], ref[finite], rtol=1e-4, atol=1e-4)


def test_strip_candidates_only_for_the_stem():
    from fusedres import gpu_inspect
    for spec in gpu_inspect.specialisations("resnet50", torch.float16, 256):
        _, consts = kernel_module.launch_scalars(**spec._asdict(), allow_tf32=False,
                                                 interpreted=False)
        strip = kernel_module.strip_candidates(consts)
        assert len(strip) == (2 if spec.c_in == 3 else 0)
        # RGB input: every strip over the input padded to 4 channels (vector loads).
        assert all(c.kwargs.get("PAD_C") == 4 for c in strip)
    one_channel = dict(consts, C_in=1, GATHER_K=True, GROUPS=1, KW=7, DIL=1)
    assert [c.kwargs.get("PAD_C") for c in kernel_module.strip_candidates(one_channel)] \
        == [None, None]
    grouped = dict(consts, GATHER_K=True, C_in=64, GROUPS=32, KW=3, DIL=1)
    assert kernel_module.strip_candidates(grouped) == []


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_at_most_eight_candidates_per_launch(model):
    """Every candidate is a compile on a launch's first call: at most MAX_CANDIDATES, on
    either target, at batch 1 (split-K) and 256, in every dtype.  On sm_90: 4 warps or more,
    no 64x64 tile on padded convolutions, of the stem's gathered walk only the proven tile."""
    from fusedres import gpu_inspect
    for dtype in DTYPES:
        for batch in (1, 256):
            for spec in gpu_inspect.specialisations(model, dtype, batch):
                ints, consts = kernel_module.launch_scalars(**spec._asdict(), allow_tf32=True,
                                                            interpreted=False)
                for arch in (80, 90, None):
                    listed = kernel_module.candidates(consts, dtype.itemsize, ints["M"], arch)
                    assert 0 < len(listed) <= kernel_module.MAX_CANDIDATES, spec.describe()
                    assert len({autotune.describe(c) for c in listed}) == len(listed)
                    if arch != 90:
                        continue
                    assert min(c.num_warps for c in listed) >= 4
                    if consts["PAD"] and not consts["GATHER_K"]:
                        assert (64, 64) not in {kernel_module._tile(c)[:2] for c in listed
                                                if not c.kwargs.get("USE_TMA")}
                    if kernel_module.strip_candidates(consts):
                        gathered = [c for c in listed if not c.kwargs.get("STRIP_K")]
                        assert [kernel_module._tile(c) for c in gathered] == [(128, 128, 32)]


def test_at_most_eight_candidates_for_any_geometry():
    # Beyond ResNet: unpadded and padded kernels of every size, strides, channel counts that
    # do and do not take TMA, groups, small and large grids.
    import itertools
    for kernel, pad, stride, c_in, c_out, groups, m in itertools.product(
            (1, 3, 5, 7), (0, 1, 3), (1, 2), (3, 16, 64, 128), (64, 128, 256), (1, 4),
            (49, 100_000)):
        if c_in % groups:
            continue
        batch = 1 if m == 49 else 2041
        _, consts = kernel_module.launch_scalars(
            batch=batch, c_in=c_in, height=7 * stride, width=7 * stride, c_out=c_out,
            kernel_size=(kernel, kernel), stride=stride, padding=pad, dilation=1,
            groups=groups, relu=True, residual=False, shortcut=None, dtype=torch.float16,
            allow_tf32=False, interpreted=False)
        for size, arch in itertools.product((2, 4), (80, 90, None)):
            listed = kernel_module.candidates(consts, size, m, arch)
            assert 0 < len(listed) <= kernel_module.MAX_CANDIDATES, (kernel, pad, stride, c_in)


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_split_k_candidates_fill_the_gpu_at_batch_1(model):
    """Batch 1's layer3/layer4 get split-K candidates that launch at least one program per SM
    (132); batch 256 gets none; there are never more slices than K steps (an empty slice)."""
    from fusedres import gpu_inspect
    checked = 0
    for batch in (1, 256):
        for spec in gpu_inspect.specialisations(model, torch.float16, batch):
            ints, consts = kernel_module.launch_scalars(**spec._asdict(), allow_tf32=False,
                                                        interpreted=False)
            split = kernel_module.split_k_candidates(ints["M"], consts, 2)
            if batch == 256 or consts["GATHER_K"]:
                assert split == []
                continue
            for config in split:
                kw = config.kwargs
                assert 1 < kw["SPLIT_K"] <= kernel_module.k_steps(consts, kw["BLOCK_K"])
                checked += 1
            if consts["OH"] <= 14:  # layer3 and layer4
                assert split, spec.describe()
                assert max(triton.cdiv(ints["M"], c.kwargs["BLOCK_M"])
                           * triton.cdiv(spec.c_out, c.kwargs["BLOCK_N"]) * c.kwargs["SPLIT_K"]
                           for c in split) >= kernel_module._SMS, spec.describe()
    assert checked >= 8  # batch 1 has split-K candidates to check


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_k_with_one_step_per_slice(dtype, split_k, monkeypatch):
    # As many slices as K steps (the shortest slices the launcher picks): 3 main steps of 16
    # channels (the last one partial), then 2 of the shortcut's.
    monkeypatch.setattr(kernel_module, "INTERPRETER_SPLIT_K", 1000)
    _check_shortcut((1, 40, 5, 3, 24, 1, 1, 0, 1), (32, 9, 5, 2), dtype)
    assert split_k == [5]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
@pytest.mark.parametrize("epilogue", ["relu", "residual+relu", "none"])
def test_geometry_matches_float64(geometry, dtype, epilogue, k_loop):
    if not k_loop and geometry[2] // geometry[10] < kernel_module.GATHER_K_BELOW:
        pytest.skip("the flattened K walk has one loop; LEAN_K does not apply")
    _check_geometry(geometry, dtype, epilogue)


def _check_geometry(geometry, dtype, epilogue):
    _, n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups = geometry
    x, weight, bias = _operands(n, c_in, h, w, c_out, kernel, groups, dtype)
    relu = epilogue != "none"
    ref = _reference(x, weight, bias, stride, padding, dilation, groups, relu=False)
    residual = torch.randn_like(ref).to(dtype) if "residual" in epilogue else None
    ref = _reference(x, weight, bias, stride, padding, dilation, groups, residual, relu=relu)
    out = _launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding,
                  dilation=dilation, groups=groups, relu=relu, residual=residual)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, ref, rel_tol(dtype), f"{geometry[0]} {dtype} {epilogue}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("main,shortcut_geometry", SHORTCUT_GEOMETRIES,
                         ids=["bottleneck", "basic", "stride1"])
def test_shortcut_fusion_matches_float64(main, shortcut_geometry, dtype):
    _check_shortcut(main, shortcut_geometry, dtype)


def _check_shortcut(main, shortcut_geometry, dtype):
    n, c_in, h, w, c_out, kernel, stride, padding, groups = main
    c_s, hs, ws_, stride_s = shortcut_geometry
    x, weight, bias = _operands(n, c_in, h, w, c_out, kernel, groups, dtype)
    xs = torch.randn(n, c_s, hs, ws_, device=DEVICE).to(dtype)
    w_short = (torch.randn(c_out, c_s, 1, 1, device=DEVICE) / c_s ** 0.5).to(dtype)
    ref = _reference(x, weight, bias, stride, padding, 1, groups, shortcut=(xs, w_short, stride_s))
    out = _launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding, dilation=1,
                  groups=groups, relu=True, shortcut=(xs, w_short, stride_s))
    assert_close_to_reference(out, ref, rel_tol(dtype), f"shortcut {dtype}")


# FUSEDRES_FUZZ picks how hard the fuzz below searches: "quick" (CI, seconds) or "deep"
# (10,000 examples, run by hand: about half an hour to an hour on 2 CPU cores under the
# interpreter; `nice -n 19 env FUSEDRES_FUZZ=deep pytest tests/test_kernel.py -k fuzzed
# --hypothesis-show-statistics` prints how many examples ran).
FUZZ_EXAMPLES = {"quick": 40, "deep": 10_000}
FUZZ = os.environ.get("FUSEDRES_FUZZ", "quick")
if FUZZ not in FUZZ_EXAMPLES:
    raise ValueError(f"FUSEDRES_FUZZ={FUZZ!r}: expected one of {', '.join(FUZZ_EXAMPLES)}")


@st.composite
def _geometries(draw):
    groups = draw(st.sampled_from([1, 1, 2, 4]))
    # Per-group channel counts mostly not multiples of 16: partial K and N tiles.
    c_in = groups * draw(st.integers(1, 40))
    c_out = groups * draw(st.integers(1, 40))
    kernel = draw(st.sampled_from([1, 2, 3, 5, 7]))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 3))
    smallest = max(1, dilation * (kernel - 1) + 1 - 2 * padding)  # one output pixel
    h = draw(st.integers(smallest, max(smallest, 13)))
    w = draw(st.integers(smallest, max(smallest, 13)))
    n = draw(st.integers(1, 3))
    return n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups


@st.composite
def _shortcuts(draw, n, oh, ow):
    """None, or a 1x1 shortcut ``(xs shape, stride_s)`` whose output is ``oh x ow``."""
    if not draw(st.booleans()):
        return None
    stride_s = draw(st.integers(1, 2))
    # Any input size the 1x1/stride_s convolution maps onto oh x ow (odd remainders too).
    hs = (oh - 1) * stride_s + 1 + draw(st.integers(0, stride_s - 1))
    ws = (ow - 1) * stride_s + 1 + draw(st.integers(0, stride_s - 1))
    return (n, draw(st.integers(1, 40)), hs, ws), stride_s


@settings(max_examples=FUZZ_EXAMPLES[FUZZ], deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(geometry=_geometries(), dtype=st.sampled_from(DTYPES), residual=st.booleans(),
       relu=st.booleans(), lean_k=st.booleans(), data=st.data())
def test_fuzzed_geometries_match_float64(geometry, dtype, residual, relu, lean_k, data):
    n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups = geometry
    x, weight, bias = _operands(n, c_in, h, w, c_out, kernel, groups, dtype)
    ref = _reference(x, weight, bias, stride, padding, dilation, groups, relu=False)
    res = torch.randn_like(ref).to(dtype) if residual else None
    drawn = data.draw(_shortcuts(n, ref.shape[2], ref.shape[3]), label="shortcut")
    shortcut = None
    if drawn is not None:
        (_, c_s, hs, ws), stride_s = drawn
        xs = torch.randn(n, c_s, hs, ws, device=DEVICE).to(dtype)
        shortcut = (xs, (torch.randn(c_out, c_s, 1, 1, device=DEVICE) / c_s ** 0.5).to(dtype),
                    stride_s)
    ref = _reference(x, weight, bias, stride, padding, dilation, groups, res, shortcut, relu)
    # Both K loops under the interpreter (see k_loop; a fixture cannot vary per example).
    previous = kernel_module.INTERPRETER_LEAN_K
    kernel_module.INTERPRETER_LEAN_K = lean_k
    try:
        out = _launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, relu=relu, residual=res,
                      shortcut=shortcut)
    finally:
        kernel_module.INTERPRETER_LEAN_K = previous
    assert_close_to_reference(out, ref, rel_tol(dtype),
                              f"{geometry} {dtype} residual={residual} shortcut={drawn} "
                              f"relu={relu} lean_k={lean_k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", ["gathered K +residual", "tap-major K +shortcut"])
def test_int64_offsets_match_float64(case, dtype, monkeypatch):
    """The int64 offset path, forced on a small problem by lowering the threshold (real
    inputs past 2**31 elements need a GPU: test_int64_offsets_past_2_to_the_31)."""
    monkeypatch.setattr(kernel_module, "INDEX_32_LIMIT", 1)
    launched = []
    real_scalars = kernel_module.launch_scalars

    def recording_scalars(**kwargs):
        ints, consts = real_scalars(**kwargs)
        launched.append(consts["INDEX_64"])
        return ints, consts

    monkeypatch.setattr(kernel_module, "launch_scalars", recording_scalars)
    if case.startswith("gathered"):
        n, c_in, h, w, c_out, kernel, stride, padding = 2, 3, 11, 9, 32, 7, 2, 3
    else:
        n, c_in, h, w, c_out, kernel, stride, padding = 2, 32, 5, 4, 32, 3, 1, 1
    x, weight, bias = _operands(n, c_in, h, w, c_out, kernel, 1, dtype)
    residual = shortcut = None
    if case.endswith("residual"):
        ref = _reference(x, weight, bias, stride, padding, 1, 1, relu=False)
        residual = torch.randn_like(ref).to(dtype)
    else:
        xs = torch.randn(n, 16, 2 * h, 2 * w, device=DEVICE).to(dtype)
        shortcut = (xs, (torch.randn(c_out, 16, 1, 1, device=DEVICE) / 4).to(dtype), 2)
    ref = _reference(x, weight, bias, stride, padding, 1, 1, residual, shortcut)
    out = _launch(x, weight, bias, kernel=kernel, stride=stride, padding=padding, dilation=1,
                  groups=1, relu=True, residual=residual, shortcut=shortcut)
    assert launched == [True]
    assert_close_to_reference(out, ref, rel_tol(dtype), f"int64 {case} {dtype}")


@pytest.mark.parametrize("tensor", ["input", "shortcut input", "output"])
def test_int64_offsets_from_2_to_the_31_elements(tensor):
    """launch_scalars switches to int64 offsets exactly when one activation tensor reaches
    2**31 elements (the residual has the output's shape)."""
    def index_64(elements):
        # A 1x1 convolution of 1x1 images in which only `tensor` has `elements` elements.
        c_in = elements if tensor == "input" else 1
        c_out = elements if tensor == "output" else 1
        shortcut = (elements, 1, 1, 1) if tensor == "shortcut input" else None
        _, consts = kernel_module.launch_scalars(
            batch=1, c_in=c_in, height=1, width=1, c_out=c_out, kernel_size=(1, 1), stride=1,
            padding=0, dilation=1, groups=1, relu=True, residual=False, shortcut=shortcut,
            dtype=torch.float16, allow_tf32=False)
        return consts["INDEX_64"]

    assert not index_64(2 ** 31 - 1)
    assert index_64(2 ** 31)


def test_batch_of_zero_returns_empty():
    x, weight, bias = _operands(1, 8, 5, 5, 16, 3, 1, torch.float32)
    out = conv_bn_act(x[:0], pack_weight(weight, torch.float32), bias, kernel_size=3, padding=1)
    assert out.shape == (0, 16, 5, 5)


def test_nchw_input_gives_channels_last_output():
    x, weight, bias = _operands(2, 8, 5, 6, 16, 3, 1, torch.float32)
    assert x.is_contiguous()  # NCHW
    out = conv_bn_act(x, pack_weight(weight, torch.float32), bias, kernel_size=3, padding=1,
                      allow_tf32=False)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, _reference(x, weight, bias, 1, 1, 1, 1), 1e-5)


class TestLauncherRejectsBadInput:
    def _args(self, dtype=torch.float32):
        x, weight, bias = _operands(1, 8, 5, 5, 16, 3, 1, dtype)
        return x, pack_weight(weight, dtype), bias

    def test_non_tensor(self):
        _, w, b = self._args()
        with pytest.raises(TypeError, match="must be a torch.Tensor"):
            conv_bn_act([[1.0]], w, b, kernel_size=3)

    def test_not_4d(self):
        x, w, b = self._args()
        with pytest.raises(ValueError, match="4-D"):
            conv_bn_act(x[0], w, b, kernel_size=3)

    def test_unsupported_dtype(self):
        x, w, b = self._args()
        with pytest.raises(TypeError, match="unsupported input dtype torch.float64"):
            conv_bn_act(x.double(), w, b, kernel_size=3)

    def test_mismatched_dtypes(self):
        x, w, b = self._args()
        with pytest.raises(TypeError, match="weight has dtype torch.float16"):
            conv_bn_act(x, w.half(), b, kernel_size=3)

    def test_channel_mismatch(self):
        x, w, b = self._args()
        with pytest.raises(ValueError, match="channel mismatch: input has 4 channels"):
            conv_bn_act(x[:, :4], w, b, kernel_size=3)

    def test_groups_not_dividing_channels(self):
        x, w, b = self._args()
        with pytest.raises(ValueError, match="not divisible by groups=3"):
            conv_bn_act(x, w, b, kernel_size=3, groups=3)

    def test_different_devices(self):
        x, w, b = self._args()
        with pytest.raises(ValueError, match="weight is on meta"):
            conv_bn_act(x, w.to("meta"), b, kernel_size=3)

    def test_residual_of_wrong_shape(self):
        x, w, b = self._args()
        with pytest.raises(ValueError, match="residual has shape"):
            conv_bn_act(x, w, b, kernel_size=3, padding=1, residual=torch.zeros(1, 16, 4, 4))

    def test_residual_of_wrong_dtype(self):
        x, w, b = self._args()
        with pytest.raises(TypeError, match="residual has dtype torch.float16"):
            conv_bn_act(x, w, b, kernel_size=3, padding=1,
                        residual=torch.zeros(1, 16, 5, 5, dtype=torch.float16))

    def test_bias_of_wrong_dtype(self):
        x, w, b = self._args()
        with pytest.raises(ValueError, match="bias must be a float32"):
            conv_bn_act(x, w, b.half(), kernel_size=3)

    def test_input_too_small(self):
        x, w, b = self._args()
        with pytest.raises(ValueError, match="too small"):
            conv_bn_act(x[:, :, :2, :2], w, b, kernel_size=3)

    def test_out_aliasing_the_residual(self):
        x, w, b = self._args()
        residual = torch.zeros(1, 16, 5, 5).contiguous(memory_format=torch.channels_last)
        with pytest.raises(ValueError, match="out must not share memory"):
            conv_bn_act(x, w, b, kernel_size=3, padding=1, residual=residual, out=residual)

    def test_shortcut_of_wrong_shape(self):
        x, w, b = self._args()
        xs = torch.randn(1, 4, 7, 7)
        ws = pack_weight(torch.randn(16, 4, 1, 1), torch.float32)
        with pytest.raises(ValueError, match="shortcut input of shape"):
            conv_bn_act(x, w, b, kernel_size=3, padding=1, shortcut=(xs, ws, 1))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tf32_follows_cudnn_flag(dtype, monkeypatch):
    """On a GPU, fp32 uses TF32 exactly when cuDNN would; TF32 stays within its tolerance and
    IEEE within fp32's."""
    geometry = GEOMETRIES[1]
    _, n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups = geometry
    x, weight, bias = _operands(n, c_in, h, w, c_out, kernel, groups, dtype)
    ref = _reference(x, weight, bias, stride, padding, dilation, groups)
    for allow in (True, False):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow)
        out = conv_bn_act(x, pack_weight(weight, dtype), bias, kernel_size=kernel,
                          stride=stride, padding=padding)
        assert_close_to_reference(out, ref, rel_tol(dtype, tf32=allow), f"tf32={allow}")


@pytest.mark.gpu
def test_int64_offsets_past_2_to_the_31():
    """An input of more than 2**31 elements: the last image must be computed correctly."""
    n, c, h, w = 2, 64, 2048, 8200  # 2 * 64 * 2048 * 8200 > 2**31
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, c, 1, 1, device="cuda", dtype=torch.float16) / 8
    bias = torch.zeros(64, device="cuda")
    out = conv_bn_act(x, pack_weight(weight, torch.float16), bias, kernel_size=1, relu=False)
    tail = x[-1:, :, -4:, -4:]
    ref = F.conv2d(tail.double(), weight.double())
    assert_close_to_reference(out[-1:, :, -4:, -4:], ref, rel_tol(torch.float16), "tail")


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
        assert kernel_module.cudnn_allows_tf32() is expected
    finally:
        conv.fp32_precision = previous


@pytest.mark.parametrize("where", ["input", "shortcut input", "residual", "padding border"])
def test_nan_and_inf_land_where_the_reference_puts_them(where, k_loop):
    _check_nan_and_inf(where)


@pytest.mark.parametrize("where", ["input", "shortcut input", "residual", "padding border"])
def test_nan_and_inf_land_where_the_reference_puts_them_with_split_k(where, split_k):
    _check_nan_and_inf(where)
    assert len(split_k) == 1 and split_k[0] > 1


def _check_nan_and_inf(where):
    # Masked loads fill with 0 only outside the tensors (padding, partial tiles): a real NaN or
    # Inf in any operand must reach the output, and padding must not create one.
    x, weight, bias = _operands(1, 64, 7, 6, 128, 3, 1, torch.float32)
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
    ref = _reference(x, weight, bias, 1, 1, 1, 1, residual, (xs, w_short, 2))
    out = _launch(x, weight, bias, kernel=3, stride=1, padding=1, dilation=1, groups=1,
                  relu=True, residual=residual, shortcut=(xs, w_short, 2))
    out, ref = out.cpu().double(), ref.cpu()
    assert (ref.isnan() | ref.isinf()).any()
    assert torch.equal(out.isnan(), ref.isnan()), where
    assert torch.equal(out.isinf(), ref.isinf()), where
    finite = ref.isfinite()
    assert torch.allclose(out[finite], ref[finite], rtol=1e-4, atol=1e-4)
