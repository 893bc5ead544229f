"""FusedConvBN against eager conv -> BatchNorm (-> + residual) (-> ReLU).

Every eval-mode test runs on both backends: the Triton kernel (interpreted on CPU, native on
a GPU) and the CPU torch path (folded conv through torch ops).
"""
import copy

import pytest
import torch
from torch import nn

from fusedres import FusedConvBN, UnsupportedModelError

from .conftest import DEVICE, TF32
from .numerics import assert_close_to_reference, conv_bn_pair, rel_tol


def _eager_reference(conv, bn, x, residual=None, relu=True):
    conv64, bn64 = copy.deepcopy(conv).double().eval(), copy.deepcopy(bn).double().eval()
    with torch.no_grad():
        y = bn64(conv64(x.double()))
        if residual is not None:
            y = y + residual.double()
        return y.relu() if relu else y


GEOMETRIES = [  # c_in, c_out, kernel, stride, padding, groups, bias
    (3, 64, 7, 2, 3, 1, False),
    (32, 48, 3, 1, 1, 1, True),
    (64, 128, 1, 2, 0, 1, False),
    (64, 64, 3, 2, 1, 16, False),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0]}-{g[1]}k{g[2]}s{g[3]}g{g[5]}")
@pytest.mark.parametrize("relu", [True, False])
def test_eval_matches_eager(geometry, relu, backend, count_launches):
    c_in, c_out, k, s, p, g, bias = geometry
    conv, bn = conv_bn_pair(c_in, c_out, k, s, p, groups=g, bias=bias)
    fused = FusedConvBN(conv, bn, relu=relu).to(DEVICE).eval()
    x = torch.randn(2, c_in, 13, 11, device=DEVICE)
    with torch.no_grad():
        out = fused(x)
    assert len(count_launches) == (1 if backend == "triton" else 0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, _eager_reference(conv, bn, x, relu=relu),
                              rel_tol(torch.float32, TF32))


def test_eval_with_residual_and_channels_last_input(backend):
    conv, bn = conv_bn_pair(16, 16, 3, 1, 1)
    fused = FusedConvBN(conv, bn).to(DEVICE).eval()
    x = torch.randn(3, 16, 9, 7, device=DEVICE).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(3, 16, 9, 7, device=DEVICE)
    with torch.inference_mode():
        out = fused(x, residual)
    assert_close_to_reference(out, _eager_reference(conv, bn, x, residual),
                              rel_tol(torch.float32, TF32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_module(dtype, backend):
    if backend == "torch" and dtype == torch.float16:
        pytest.skip("fp16 convolution is not a CPU dtype eager PyTorch serves well")
    conv, bn = conv_bn_pair(32, 64, 3, 1, 1)
    fused = FusedConvBN(conv, bn).to(DEVICE).eval().to(dtype)
    x = torch.randn(2, 32, 9, 9, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        out = fused(x)
    assert out.dtype == dtype
    # Reference: eager with the module's own (rounded) parameters, in float64.
    assert_close_to_reference(out, _eager_reference(fused.conv, fused.bn, x),
                              4 * rel_tol(dtype))


def test_train_mode_is_eager():
    conv, bn = conv_bn_pair(8, 16, 3, 1, 1)
    fused = FusedConvBN(copy.deepcopy(conv), copy.deepcopy(bn)).train()
    eager_conv, eager_bn = copy.deepcopy(conv).train(), copy.deepcopy(bn).train()
    x = torch.randn(4, 8, 7, 7, requires_grad=True)
    x_eager = x.detach().clone().requires_grad_()
    residual = torch.randn(4, 16, 7, 7)
    out = fused(x, residual)
    ref = torch.relu(eager_bn(eager_conv(x_eager)) + residual)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_eager.grad)
    torch.testing.assert_close(fused.conv.weight.grad, eager_conv.weight.grad)
    torch.testing.assert_close(fused.bn.weight.grad, eager_bn.weight.grad)
    torch.testing.assert_close(fused.bn.running_mean, eager_bn.running_mean)
    torch.testing.assert_close(fused.bn.running_var, eager_bn.running_var)
    assert fused.bn.num_batches_tracked == 1


@pytest.mark.no_launch
def test_eval_with_autograd_recording_keeps_gradients(backend, count_launches):
    """Eval mode with autograd on (e.g. frozen-BN fine-tuning) must give real gradients, so it
    runs the eager graph instead of the kernel."""
    conv, bn = conv_bn_pair(8, 16, 3, 1, 1)
    fused = FusedConvBN(conv, bn).to(DEVICE).eval()
    x = torch.randn(2, 8, 7, 7, device=DEVICE)
    out = fused(x)
    assert out.requires_grad and not count_launches
    out.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_state_dict_keys_are_eager():
    conv, bn = conv_bn_pair(8, 16, 3, 1, 1)
    fused = FusedConvBN(conv, bn)
    eager = nn.Sequential()
    eager.conv, eager.bn = conv, bn
    assert list(fused.state_dict()) == list(eager.state_dict())


class TestNeverStale:
    def _check(self, fused, x):
        with torch.no_grad():
            out = fused(x)
        assert_close_to_reference(out, _eager_reference(fused.conv, fused.bn, x),
                                  rel_tol(torch.float32, TF32))

    @pytest.fixture
    def setup(self):
        conv, bn = conv_bn_pair(8, 16, 3, 1, 1, bias=True)
        fused = FusedConvBN(conv, bn).to(DEVICE).eval()
        x = torch.randn(2, 8, 7, 7, device=DEVICE)
        self._check(fused, x)  # fills the cache
        return fused, x

    @pytest.mark.parametrize("tensor", ["conv.weight", "conv.bias", "bn.weight", "bn.bias",
                                        "bn.running_mean", "bn.running_var"])
    def test_in_place_edit(self, setup, backend, tensor):
        fused, x = setup
        with torch.no_grad():
            target = (fused.get_buffer(tensor) if "running" in tensor
                      else fused.get_parameter(tensor))
            target.mul_(1.7).add_(0.3)
        self._check(fused, x)

    def test_eps_change(self, setup, backend):
        fused, x = setup
        fused.bn.eps = 0.5
        self._check(fused, x)

    def test_load_state_dict(self, setup, backend):
        fused, x = setup
        other = FusedConvBN(*conv_bn_pair(8, 16, 3, 1, 1, bias=True))
        fused.load_state_dict(other.state_dict())
        self._check(fused, x)

    def test_replaced_parameter(self, setup, backend):
        fused, x = setup
        fused.conv.weight = nn.Parameter(torch.randn_like(fused.conv.weight))
        self._check(fused, x)

    def test_replaced_submodule(self, setup, backend):
        fused, x = setup
        fused.bn = conv_bn_pair(8, 16, 3)[1].to(DEVICE).eval()
        self._check(fused, x)

    @pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "autograd"])
    def test_train_mode_steps(self, setup, backend, mode):
        """A train-mode forward updates the running statistics without bumping their version
        counters (only ``num_batches_tracked``'s), under any grad mode."""
        fused, x = setup
        fused.train()
        batch = torch.randn(4, 8, 7, 7, device=DEVICE) * 3 + 1
        if mode == "autograd":
            fused(batch.requires_grad_())
        else:
            with getattr(torch, mode)():
                fused(batch)
        fused.eval()
        self._check(fused, x)

    def test_dtype_round_trip(self, setup, backend):
        """half() then float() rounds every weight; the cache must notice."""
        fused, x = setup
        fused.half().float()
        self._check(fused, x)


class TestRejectsBadInput:
    def test_wrong_channel_count(self):
        fused = FusedConvBN(*conv_bn_pair(8, 16, 3, 1, 1)).eval()
        with torch.no_grad(), pytest.raises(ValueError, match="has 4 channels but the convolution expects 8"):
            fused(torch.randn(1, 4, 5, 5))

    def test_not_4d(self):
        fused = FusedConvBN(*conv_bn_pair(8, 16, 3, 1, 1)).eval()
        with torch.no_grad(), pytest.raises(ValueError, match="4-D"):
            fused(torch.randn(8, 5, 5))

    def test_integer_input(self):
        fused = FusedConvBN(*conv_bn_pair(8, 16, 3, 1, 1)).eval()
        with torch.no_grad(), pytest.raises(TypeError, match="unsupported input dtype torch.int64"):
            fused(torch.ones(1, 8, 5, 5, dtype=torch.long))

    def test_residual_wrong_shape(self, backend):
        fused = FusedConvBN(*conv_bn_pair(8, 16, 3, 1, 1)).to(DEVICE).eval()
        with torch.no_grad(), pytest.raises(ValueError, match="residual has shape"):
            fused(torch.randn(1, 8, 5, 5, device=DEVICE), torch.randn(1, 16, 4, 5, device=DEVICE))

    @pytest.mark.no_launch
    def test_residual_wrong_dtype(self, backend):
        fused = FusedConvBN(*conv_bn_pair(8, 16, 3, 1, 1)).to(DEVICE).eval()
        with torch.no_grad(), pytest.raises(TypeError, match="residual has dtype torch.float64"):
            fused(torch.randn(1, 8, 5, 5, device=DEVICE),
                  torch.randn(1, 16, 5, 5, device=DEVICE, dtype=torch.float64))

    def test_bn_channels_mismatch(self):
        with pytest.raises(ValueError, match="BatchNorm2d has 8 features"):
            FusedConvBN(nn.Conv2d(4, 16, 3), nn.BatchNorm2d(8))

    def test_not_a_conv(self):
        with pytest.raises(ValueError, match="expected nn.Conv2d"):
            FusedConvBN(nn.Linear(4, 4), nn.BatchNorm2d(4))

    def test_non_square_stride(self):
        with pytest.raises(ValueError, match="non-square stride"):
            FusedConvBN(nn.Conv2d(4, 8, 3, stride=(1, 2)), nn.BatchNorm2d(8))

    def test_reflect_padding(self):
        with pytest.raises(ValueError, match="only explicit zero padding"):
            FusedConvBN(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(8))

    def test_bn_without_running_stats(self):
        with pytest.raises(ValueError, match="running statistics"):
            FusedConvBN(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8, track_running_stats=False))

    @pytest.mark.parametrize("part", ["conv", "bn"])
    def test_subclass_is_refused_as_by_fuse(self, part):
        """Exact classes, as ``fuse`` requires: a subclass may change what forward computes."""
        class Conv(nn.Conv2d):
            def forward(self, x):
                return -super().forward(x)

        class BatchNorm(nn.BatchNorm2d):
            def forward(self, x):
                return -super().forward(x)

        conv = Conv(4, 8, 3) if part == "conv" else nn.Conv2d(4, 8, 3)
        bn = BatchNorm(8) if part == "bn" else nn.BatchNorm2d(8)
        base = "nn.Conv2d" if part == "conv" else "nn.BatchNorm2d"
        with pytest.raises(UnsupportedModelError, match=rf"^expected {base} itself \(a subclass "
                                                        rf"may change what forward computes"):
            FusedConvBN(conv, bn)


@pytest.mark.gpu
def test_cuda_module_and_autocast():
    conv, bn = conv_bn_pair(16, 32, 3, 1, 1)
    fused = FusedConvBN(conv, bn).cuda().eval()
    x = torch.randn(2, 16, 9, 9, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        out = fused(x)
        eager = torch.relu(bn(conv(x)))
    assert out.dtype == eager.dtype == torch.float16
    assert_close_to_reference(out, _eager_reference(conv, bn, x.half().float()), 4 * rel_tol(torch.float16))


@pytest.mark.parametrize("where", ["input", "residual", "weight", "running_var"])
def test_nan_and_inf_reach_the_output_where_eager_puts_them(where, backend, count_launches):
    # A plain max(acc, 0) turns NaN into 0 and would hide an fp16 overflow behind a healthy
    # looking output; eager's relu keeps it.  Padding must not create NaN either.
    conv, bn = conv_bn_pair(8, 8, 3, 1, 1)
    x = torch.randn(2, 8, 9, 7)
    residual = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        if where == "input":
            x[0, 1, 4, 3] = float("nan")
            x[1, 5, 0, 0] = float("inf")
        elif where == "residual":
            residual[1, 2, 8, 6] = float("nan")
            residual[0, 0, 0, 0] = -float("inf")
        elif where == "weight":
            conv.weight[3, 2, 1, 1] = float("nan")
        else:
            bn.running_var[6] = float("nan")
    fused = FusedConvBN(conv, bn).to(DEVICE).eval()
    with torch.no_grad():
        out = fused(x.to(DEVICE), residual.to(DEVICE)).cpu()
        expected = torch.relu(bn(conv(x)) + residual)
    assert len(count_launches) == (1 if backend == "triton" else 0)
    assert expected.isnan().any()
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.isinf(), expected.isinf())
    finite = expected.isfinite()
    assert torch.allclose(out[finite], expected[finite], rtol=1e-2, atol=1e-2)
