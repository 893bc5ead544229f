"""``conv_bn_act``'s contract: bad input rejected with a clear error before any launch, the
output's layout, an explicit config, the launch record, TF32 as cuDNN does it."""
import pytest
import torch

from fusedres.kernels import (ConvConfig, conv_bn_act, cudnn_allows_tf32, pack_weight,
                              record_launches)

from ...numerics import assert_close_to_reference, rel_tol
from .cases import GEOMETRIES, operands, reference


def test_batch_of_zero_returns_empty():
    x, weight, bias = operands(1, 8, 5, 5, 16, 3, 1, torch.float32)
    with record_launches() as launches:
        out = conv_bn_act(x[:0], pack_weight(weight, torch.float32), bias, kernel_size=3,
                          padding=1)
    assert out.shape == (0, 16, 5, 5) and launches == []


def test_nchw_input_gives_channels_last_output():
    x, weight, bias = operands(2, 8, 5, 6, 16, 3, 1, torch.float32)
    assert x.is_contiguous()  # NCHW
    out = conv_bn_act(x, pack_weight(weight, torch.float32), bias, kernel_size=3, padding=1,
                      allow_tf32=False)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, reference(x, weight, bias, 1, 1, 1, 1), 1e-5)


def test_an_explicit_config_is_what_runs():
    x, weight, bias = operands(1, 32, 6, 5, 48, 3, 1, torch.float32)
    config = ConvConfig(16, 16, 16, 4, 2, recompute_taps=True)
    with record_launches() as launches:
        out = conv_bn_act(x, pack_weight(weight, torch.float32), bias, kernel_size=3,
                          padding=1, allow_tf32=False, config=config)
    # 30 pixels in 2 row tiles, 48 channels in 3 column tiles.
    assert [(launch.config, launch.walk, launch.grid) for launch in launches] \
        == [(config, "taps-recomputed", (2 * 3, 1))]
    assert launches[0].geometry.output_shape == (1, 48, 6, 5)
    assert_close_to_reference(out, reference(x, weight, bias, 1, 1, 1, 1), 1e-5)


class TestRejectsBadInput:
    def _args(self, dtype=torch.float32):
        x, weight, bias = operands(1, 8, 5, 5, 16, 3, 1, dtype)
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

    def test_config_of_another_type(self):
        x, w, b = self._args()
        with pytest.raises(TypeError, match="config must be a ConvConfig"):
            conv_bn_act(x, w, b, kernel_size=3, config={"BLOCK_M": 64})

    @pytest.mark.parametrize("config,match", [
        (ConvConfig(64, 48, 16, 4, 2), "block_n must be a power of two"),
        (ConvConfig(64, 64, 8, 4, 2), "block_k must be at least 16"),
        (ConvConfig(64, 64, 16, 4, 2, pad_c=4), "pad_c applies to an ungrouped 3-channel"),
        (ConvConfig(64, 64, 16, 4, 2, strip=True), "strip needs the gathered walk"),
        (ConvConfig(64, 64, 16, 4, 2, split_k=10), "split_k must be between 1 and the 9"),
        (ConvConfig(64, 64, 16, 4, 2, patch_w=48), "patch_w needs"),
        (ConvConfig(64, 64, 16, 4, 2, tma=True), "tma applies to stride-1 ungrouped fp16"),
    ], ids=lambda v: v if isinstance(v, str) else "")
    def test_config_that_cannot_run_this_launch(self, config, match):
        x, w, b = self._args()  # 8 -> 16 channels, 3x3: 16 channels per tile, 9 K steps
        x = x.repeat(1, 2, 1, 1)
        w = pack_weight(torch.randn(16, 16, 3, 3), torch.float32)
        with record_launches() as launches:
            with pytest.raises(ValueError, match=match):
                conv_bn_act(x, w, b, kernel_size=3, padding=1, config=config)
        assert launches == []

    def test_recomputed_taps_on_the_gathered_walk(self):
        x, w, b = self._args()
        with pytest.raises(ValueError, match="recompute_taps applies to the tap-major walk"):
            conv_bn_act(x, w, b, kernel_size=3, padding=1,
                        config=ConvConfig(64, 16, 16, 4, 2, recompute_taps=True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_tf32_follows_cudnn_flag(dtype, monkeypatch):
    """On a GPU, fp32 uses TF32 exactly when cuDNN would; TF32 stays within its tolerance and
    IEEE within fp32's."""
    _, n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups = GEOMETRIES[1]
    x, weight, bias = operands(n, c_in, h, w, c_out, kernel, groups, dtype)
    ref = reference(x, weight, bias, stride, padding, dilation, groups)
    for allow in (True, False):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow)
        assert cudnn_allows_tf32() is allow
        out = conv_bn_act(x, pack_weight(weight, dtype), bias, kernel_size=kernel,
                          stride=stride, padding=padding)
        assert_close_to_reference(out, ref, rel_tol(dtype, tf32=allow), f"tf32={allow}")


@pytest.mark.gpu
def test_an_autotuned_launch_is_right_and_its_choice_is_stored(tmp_path, monkeypatch):
    # The GPU stages run with FUSEDRES_AUTOTUNE=0; this one launch goes through the tuner.
    from fusedres.kernels.conv import launcher
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSEDRES_AUTOTUNE", "1")
    launcher.forget_choices()
    x, weight, bias = operands(2, 64, 14, 14, 64, 3, 1, torch.float16)
    with record_launches() as launches:
        out = conv_bn_act(x, pack_weight(weight, torch.float16), bias, kernel_size=3,
                          padding=1, relu=False)
    assert_close_to_reference(out, reference(x, weight, bias, 1, 1, 1, 1, relu=False),
                              rel_tol(torch.float16), "autotuned")
    chosen = launcher.chosen_config(launches[-1].geometry, False)
    assert chosen is not None and launches[-1].config == chosen
    assert len(list((tmp_path / "fusedres-autotune").iterdir())) == 1
