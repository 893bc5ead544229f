"""BatchNorm folding (``fusedres.folding``): the folded weights against eager BatchNorm, and
folds that never go stale, also for models made of inference tensors."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fusedres
from fusedres.folding import fold_bn, forget_folds

from .builders import built_in_inference_mode, float64_reference
from .numerics import assert_close_to_reference, model_tol, randomize_bn


@pytest.mark.parametrize("groups,bias", [(1, False), (1, True), (4, True)])
def test_fold_bn_matches_eval_batchnorm_with_large_eps(groups, bias):
    """Near-zero running variances next to a large eps: the fold's scale is
    gamma / sqrt(var + eps) only if eps is added where eval-mode BatchNorm adds it (dropping
    eps, or adding it outside the square root, changes the result by far more than rounding)."""
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(12, eps=0.5).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.0, 2e-6)
        bn.weight.normal_(1.0, 0.5)
        bn.bias.normal_(0.0, 0.5)
    x = torch.randn(2, 8, 7, 9)
    weight, folded_bias = fold_bn(conv, bn)
    assert weight.dtype == folded_bias.dtype == torch.float32
    out = F.conv2d(x, weight, folded_bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    with torch.no_grad():
        ref = copy.deepcopy(bn).double().eval()(copy.deepcopy(conv).double()(x.double()))
    assert_close_to_reference(out, ref, 1e-5, "folded conv vs eager conv + bn.eval()")


class TestInferenceTensorModel:
    """A model made under inference_mode runs, and is never stale except for the documented
    case (in-place edits inside inference_mode, see folding.TensorWatch)."""

    @pytest.fixture(autouse=True)
    def _torch_path(self, torch_path):
        """The fold cache is the same on every backend."""

    def _check(self, fused, x, mode):
        with mode():
            out = fused(x)
        assert_close_to_reference(out, float64_reference(fused, x), model_tol())

    @pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
    def test_runs_in_and_out_of_inference_mode(self, mode):
        self._check(built_in_inference_mode(), torch.randn(2, 3, 32, 32), mode)

    def test_replaced_tensors_are_seen(self):
        fused = built_in_inference_mode()
        x = torch.randn(1, 3, 32, 32)
        self._check(fused, x, torch.inference_mode)
        other = randomize_bn(torchvision.models.resnet18()).state_dict()
        with torch.inference_mode():
            fused.load_state_dict(other, assign=True)
        self._check(fused, x, torch.inference_mode)
        with torch.inference_mode():
            fused.double().float()  # new storages for every tensor, rounded on the way
        self._check(fused, x, torch.inference_mode)

    def test_normal_tensors_edited_inside_inference_mode_are_seen(self):
        fused = fusedres.fuse(randomize_bn(torchvision.models.resnet18()).eval())
        x = torch.randn(1, 3, 32, 32)
        self._check(fused, x, torch.inference_mode)
        with torch.inference_mode():
            fused.layer2[0].downsample[1].running_var.mul_(3.0)
            fused.layer3[1].conv2.weight.neg_()
        self._check(fused, x, torch.inference_mode)

    def test_forget_folds_after_editing_inference_tensors_in_place(self):
        fused = built_in_inference_mode()
        x = torch.randn(1, 3, 32, 32)
        self._check(fused, x, torch.inference_mode)
        with torch.inference_mode():
            fused.load_state_dict(randomize_bn(torchvision.models.resnet18()).state_dict())
        forget_folds(fused)
        self._check(fused, x, torch.inference_mode)

    def test_runner_invalidate_forgets_folds(self):
        """``invalidate()`` must reach the folded weights too, or re-capturing would replay
        the stale ones."""
        fused = built_in_inference_mode()
        x = torch.randn(1, 3, 32, 32)
        self._check(fused, x, torch.inference_mode)
        with torch.inference_mode():
            fused.conv1.weight.neg_()
        fusedres.CUDAGraphRunner(fused).invalidate()
        self._check(fused, x, torch.inference_mode)
