"""The config type and the candidate policy (kernels/conv/configs.py): what each launch may
be tuned over, on each target, within the budget of MAX_CANDIDATES."""
import itertools

import pytest
import torch
import triton

from fusedres import gpu_inspect
from fusedres.kernels import ConvConfig, ConvGeometry
from fusedres.kernels.conv import configs

from .cases import DTYPES


def _scalars(geometry, allow_tf32=False):
    return geometry.scalars(allow_tf32, interpreted=False)


def _geometry(batch=1, c_in=256, size=14, c_out=256, kernel=3, stride=1, padding=1, groups=1,
              dtype=torch.float16):
    return ConvGeometry(batch, c_in, size, size, c_out, (kernel, kernel), stride, padding, 1,
                        groups, True, False, None, dtype)


def test_describe_names_every_flag_that_is_set():
    assert ConvConfig(128, 128, 64, 8, 3).describe() == "128x128x64 w8 s3"
    config = ConvConfig(64, 128, 64, 8, 3, tma=True, swap_ab=True, patch_w=8)
    assert config.describe() == "64x128x64 w8 s3 tma patch 8 swap-ab"
    assert ConvConfig(128, 64, 32, 8, 4, strip=True, pad_c=4).options() == "strip pad-c 4"
    assert ConvConfig(64, 64, 64, 4, 3, recompute_taps=True, split_k=5).options() \
        == "recomputed-taps split-k 5"


def test_launch_options_are_exactly_the_kernels_config_parameters():
    """Every launch and every ahead-of-time compile pass ``launch_options()``: it must name
    each of the kernel's config constexprs (BLOCK_M ... PATCH_W) and nothing else, so that
    both produce the same JIT cache key (the launcher option pad_c stays out)."""
    from fusedres.kernels.conv.kernel import conv_bn_act_kernel
    params = conv_bn_act_kernel.arg_names
    config_params = params[params.index("BLOCK_M"):]
    options = ConvConfig(128, 64, 32, 8, 4, strip=True, pad_c=4).launch_options()
    assert sorted(options) == sorted(config_params + ["num_warps", "num_stages"])


def test_walk_names_what_runs():
    _, taps = _scalars(_geometry())
    _, stem = _scalars(_geometry(c_in=3, size=224, c_out=64, kernel=7, stride=2, padding=3))
    plain = ConvConfig(128, 128, 32, 8, 4)
    assert configs.walk(plain, taps) == "taps"
    assert configs.walk(plain._replace(recompute_taps=True), taps) == "taps-recomputed"
    assert configs.walk(plain, stem) == "gathered"
    assert configs.walk(plain._replace(strip=True, pad_c=4), stem) == "strips"
    assert configs.walk(plain._replace(tma=True), taps) == "tma-rows"
    assert configs.walk(plain._replace(tma=True, patch_w=16), taps) == "tma-patches"


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_at_most_eight_candidates_per_launch(model):
    """Every candidate is a compile on a launch's first call: at most MAX_CANDIDATES, on
    either target, at batch 1 (split-K) and 256, in every dtype.  On sm_90: 4 warps or more,
    no 64x64 tile on padded convolutions, of the stem's gathered walk only the proven tile."""
    for dtype in DTYPES:
        for batch in (1, 256):
            for geometry in gpu_inspect.specialisations(model, dtype, batch):
                ints, consts = _scalars(geometry, allow_tf32=True)
                for arch in (80, 90, None):
                    listed = configs.candidates(consts, dtype.itemsize, ints["M"], arch)
                    assert 0 < len(listed) <= configs.MAX_CANDIDATES, geometry.describe()
                    assert len({c.describe() for c in listed}) == len(listed)
                    if arch != 90:
                        continue
                    assert min(c.num_warps for c in listed) >= 4
                    if consts["PAD"] and not consts["GATHER_K"]:
                        assert (64, 64) not in {c.tile[:2] for c in listed if not c.tma}
                    if configs.strip_candidates(consts):
                        gathered = [c for c in listed if not c.strip]
                        assert [c.tile for c in gathered] == [(128, 128, 32)]


def test_at_most_eight_candidates_for_any_geometry():
    # Beyond ResNet: unpadded and padded kernels of every size, strides, channel counts that
    # do and do not take TMA, groups, small and large grids, small and large GPUs.
    for kernel, pad, stride, c_in, c_out, groups, m in itertools.product(
            (1, 3, 5, 7), (0, 1, 3), (1, 2), (3, 16, 64, 128), (64, 128, 256), (1, 4),
            (49, 100_000)):
        if c_in % groups:
            continue
        batch = 1 if m == 49 else 2041
        geometry = ConvGeometry(batch, c_in, 7 * stride, 7 * stride, c_out, (kernel, kernel),
                                stride, pad, 1, groups, True, False, None, torch.float16)
        _, consts = _scalars(geometry)
        for size, arch, sms in itertools.product((2, 4), (80, 90, None), (None, 16, 132)):
            listed = configs.candidates(consts, size, m, arch, sms)
            assert 0 < len(listed) <= configs.MAX_CANDIDATES, (kernel, pad, stride, c_in)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_default_config_is_a_candidate_for_every_geometry(dtype):
    size = dtype.itemsize
    for model in ("resnet18", "resnet50"):
        for batch in (1, 256):
            for geometry in gpu_inspect.specialisations(model, dtype, batch):
                ints, consts = _scalars(geometry, allow_tf32=True)
                config = configs.default_config(ints["M"], consts, size)
                assert config in configs.candidates(consts, size)
                # Padded tap-major convolutions recompute offsets by default on the tiles
                # that have that walk as a candidate.
                recomputed = (consts["PAD"] > 0 and not consts["GATHER_K"]
                              and config.block_n == 128)
                assert config.recompute_taps is recomputed
    # Large grids get the wide tile (the first listed one: 128x128x64), batch 1's layer4 a
    # small one.
    layer = {"C_out": 256, "GROUPS": 1, "PAD": 0, "GATHER_K": False}
    assert configs.default_config(256 * 56 * 56, layer, 2).describe() == "128x128x64 w8 s3"
    assert configs.default_config(49, dict(layer, C_out=512), 2).block_m == 64


def test_sm_90_candidates_all_fill_a_warpgroup():
    # A 2-warp tile compiles to HMMA, not wgmma, on sm_90: listed for sm_80 only.
    for dtype in (torch.float16, torch.float32):
        ints, consts = _scalars(_geometry(dtype=dtype), allow_tf32=True)
        m, size = ints["M"], dtype.itemsize
        assert min(c.num_warps for c in configs.candidates(consts, size, m, 80)) == 2
        assert min(c.num_warps for c in configs.candidates(consts, size, m, 90)) >= 4


def test_padded_convolutions_try_both_tap_walks():
    _, padded = _scalars(_geometry(batch=8, c_in=64, size=56, c_out=64))
    # The recomputed walk on the two wide tiles; not where split-K takes their place.
    assert [c.recompute_taps for c in configs.candidates(padded, 2)] == [False] * 6 + [True] * 2
    assert {c.recompute_taps for c in configs.candidates(padded, 2, m=3136)} == {False}
    assert {c.recompute_taps for c in configs.candidates(padded, 2, m=49)} == {False}
    assert {c.recompute_taps for c in configs.candidates(dict(padded, PAD=0), 2)} == {False}
    assert {c.recompute_taps for c in configs.candidates(dict(padded, GATHER_K=True), 4)} \
        == {False}


@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
@pytest.mark.parametrize("sms", [108, 132])
def test_split_k_candidates_fill_the_gpu_at_batch_1(model, sms):
    """Batch 1's layer3/layer4 get split-K candidates that launch at least one program per SM
    of the GPU at hand; batch 256 gets none; never more slices than K steps (an empty slice)."""
    checked = 0
    for batch in (1, 256):
        for geometry in gpu_inspect.specialisations(model, torch.float16, batch):
            ints, consts = _scalars(geometry)
            split = configs.split_k_candidates(ints["M"], consts, 2, sms)
            if batch == 256 or consts["GATHER_K"]:
                assert split == []
                continue
            for config in split:
                assert 1 < config.split_k <= configs.k_steps(consts, config.block_k)
                checked += 1
            if consts["OH"] <= 14:  # layer3 and layer4
                assert split, geometry.describe()
                assert max(triton.cdiv(ints["M"], c.block_m)
                           * triton.cdiv(geometry.c_out, c.block_n) * c.split_k
                           for c in split) >= sms, geometry.describe()
    assert checked >= 8  # batch 1 has split-K candidates to check


def test_split_k_follows_the_sm_count():
    # Batch-1 layer4 of ResNet-50 (512 -> 512 3x3 at 7x7): more SMs, more slices.
    ints, consts = _scalars(_geometry(c_in=512, size=7, c_out=512))
    slices = {sms: max(c.split_k for c in configs.split_k_candidates(ints["M"], consts, 2, sms))
              for sms in (108, 132)}
    assert slices[108] < slices[132]


def test_tma_candidates_only_where_they_apply():
    for model in ("resnet18", "resnet50"):
        for geometry in gpu_inspect.specialisations(model, torch.float16, 256):
            ints, consts = _scalars(geometry)
            # 1x1 stride 1 with at least two K steps of 64 channels: one, also persistent,
            # nested and (without a fused shortcut) flattened; 3x3 stride 1 (not the stem):
            # the 128x64 patch tile and, with 128 output channels or more, 64x128, and the
            # first persistent.  At batch 256 every grid has more tiles than an H200 has SMs.
            one_by_one = (geometry.kernel_size == (1, 1) and geometry.stride == 1
                          and geometry.c_in >= 128)
            three = geometry.kernel_size == (3, 3) and geometry.stride == 1
            on_90 = configs.candidates(consts, 2, ints["M"], 90)
            tma = [c for c in on_90 if c.tma and not c.persistent]
            assert len(tma) == (one_by_one + three * (1 + (geometry.c_out >= 128)))
            persistent = [c for c in on_90 if c.persistent]
            assert persistent == (configs.persistent_candidates(consts, tma[0]) if tma else [])
            assert len(persistent) == (one_by_one * (1 + (geometry.shortcut is None)) + three)
            for config in tma:
                assert config.swap_ab is three
                if three:
                    assert config.patch_w == min(64, triton.next_power_of_2(consts["OW"]))
                    # No patch row below the image: at 7x7 an 8x8 patch.
                    assert (config.block_m // config.patch_w
                            <= triton.next_power_of_2(consts["OH"]))
            assert not any(c.tma for arch in (80, None)
                           for c in configs.candidates(consts, 2, ints["M"], arch))
            assert not any(c.tma for c in configs.candidates(consts, 4, ints["M"], 90))


def test_persistent_candidates_where_the_grid_outnumbers_the_sms():
    # 1024 -> 256 1x1 at 14x14: ceil(196 * batch / 128) x 2 tiles of 128x128.
    _, gemm = _scalars(_geometry(c_in=1024, c_out=256, kernel=1, padding=0))
    for batch, sms, listed in ((1, 132, False), (256, 132, True), (256, 1024, False),
                               (None, None, True)):
        m = None if batch is None else 196 * batch
        persistent = [c for c in configs.tma_candidates(gemm, 2, m, sms) if c.persistent]
        assert [c.flatten for c in persistent] == ([False, True] if listed else [])
    # A 3x3 stride-1 launch: the persistent patch tile takes 128x128x32's place on sm_90.
    _, three = _scalars(_geometry())
    for batch, persistent in ((1, False), (256, True)):
        on_90 = configs.candidates(three, 2, 196 * batch, 90)
        assert any(c.persistent for c in on_90) is persistent
        assert ((128, 128, 32) in {c.tile for c in on_90}) is not persistent


def test_strip_candidates_only_for_the_stem():
    for geometry in gpu_inspect.specialisations("resnet50", torch.float16, 256):
        _, consts = _scalars(geometry)
        strip = configs.strip_candidates(consts)
        assert len(strip) == (2 if geometry.c_in == 3 else 0)
        # RGB input: every strip over the input padded to 4 channels (vector loads).
        assert all(c.pad_c == 4 for c in strip)
    one_channel = dict(consts, C_in=1, GATHER_K=True, GROUPS=1, KW=7, DIL=1)
    assert [c.pad_c for c in configs.strip_candidates(one_channel)] == [0, 0]
    grouped = dict(consts, GATHER_K=True, C_in=64, GROUPS=32, KW=3, DIL=1)
    assert configs.strip_candidates(grouped) == []
