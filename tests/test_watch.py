"""``fusedres.watch.ModelWatch``: one pass over a model tells whether anything its fused
launches depend on changed (CUDA graph replays and launch plans rely on it)."""
import pytest
import torch
import torchvision
from torch import nn

import fusedres
from fusedres.watch import ModelWatch

from .builders import built_in_inference_mode
from .numerics import randomize_bn


class TestModelWatch:
    """The full check (every parameter, buffer and eps), exercised on CPU."""

    @pytest.fixture
    def fused(self):
        return fusedres.fuse(randomize_bn(torchvision.models.resnet18())).eval()

    def test_unchanged(self, fused):
        watch = ModelWatch(fused)
        assert not watch.changed()
        nn.Linear(4, 4)  # registers parameters elsewhere: the watch looks again, finds nothing
        assert not watch.changed()
        assert not watch.changed()

    @pytest.mark.parametrize("change", [
        "in_place_weight", "in_place_running_var", "load_state_dict", "half_float_round_trip",
        "replaced_parameter", "replaced_submodule", "replaced_block", "eps", "train_step",
        "data_assigned", "swapped_tensors"])
    def test_change_is_seen(self, fused, change):
        watch = ModelWatch(fused)
        with torch.no_grad():
            if change == "in_place_weight":
                fused.layer3[1].conv2.weight.neg_()
            elif change == "in_place_running_var":
                fused.layer2[0].downsample[1].running_var.mul_(3.0)
            elif change == "load_state_dict":
                fused.load_state_dict(torchvision.models.resnet18().state_dict())
            elif change == "half_float_round_trip":
                fused.half().float()
            elif change == "replaced_parameter":
                fused.fc.bias = nn.Parameter(torch.randn_like(fused.fc.bias))
            elif change == "replaced_submodule":
                fused.layer2[1].bn2 = randomize_bn(nn.BatchNorm2d(128)).eval()
            elif change == "replaced_block":
                fused.layer4[1] = fusedres.fuse(torchvision.models.resnet18()).layer4[1].eval()
            elif change == "eps":
                fused.layer1[0].bn1.eps = 0.5
            elif change == "train_step":  # running statistics move, their versions do not
                fused.train()
                fused(torch.randn(2, 3, 32, 32))
                fused.eval()
            elif change == "data_assigned":  # same shape and dtype, new storage
                weight = fused.layer3[1].conv2.weight
                weight.data = torch.randn_like(weight)
            elif change == "swapped_tensors":  # versions equal: only the pointers differ
                mean = fused.layer2[1].bn1.running_mean
                other = torch.randn_like(mean)
                while other._version < mean._version:
                    other.add_(0)
                torch.utils.swap_tensors(mean, other)
        assert watch.changed()

    @pytest.mark.parametrize("conversion", ["overwrite_on_conversion", "buffer_converted"])
    def test_tensors_module_apply_writes_are_seen(self, fused, conversion):
        """``Module._apply`` puts new tensors into the module tables without a registration;
        the old ones keep their pointers and versions."""
        bn = fused.layer1[0].bn1
        if conversion == "buffer_converted":
            bn.running_var = bn.running_var.double()  # registered before the watch
        watch = ModelWatch(fused)
        assert not watch.changed()
        if conversion == "buffer_converted":
            old = bn.running_var
            fused.float()  # replaces that one buffer
            assert bn.running_var is not old and bn.running_var.dtype == torch.float32
        else:
            torch.__future__.set_overwrite_module_params_on_conversion(True)
            try:
                fused.to(memory_format=torch.channels_last)
            finally:
                torch.__future__.set_overwrite_module_params_on_conversion(False)
        assert watch.changed()

    def test_data_assignment_keeps_the_version(self):
        """Why the watch reads data pointers besides versions: ``.data = ...`` (as
        ``Module.to()`` does) gives a tensor new values and keeps its version."""
        t = torch.zeros(4)
        version, pointer = t._version, t.data_ptr()
        t.data = torch.ones(4)
        assert t._version == version and t.data_ptr() != pointer

    def test_inference_tensor_model(self):
        fused = built_in_inference_mode()
        watch = ModelWatch(fused)
        assert not watch.changed()
        with torch.inference_mode():
            fused.load_state_dict(torchvision.models.resnet18().state_dict(), assign=True)
        assert watch.changed()


class TestCheapModelWatch:
    def test_what_it_sees(self, torch_path):
        fused = fusedres.fuse(randomize_bn(torchvision.models.resnet18())).eval()
        watch = ModelWatch(fused, full=False)
        assert not watch.changed()
        with torch.no_grad():
            fused.layer1[0].conv1.weight.neg_()
        assert not watch.changed()  # in place: not seen, by design
        fused.load_state_dict(torchvision.models.resnet18().state_dict())
        assert watch.changed()
        watch = ModelWatch(fused, full=False)
        fused.layer2[1].bn2 = nn.BatchNorm2d(128).eval()
        assert watch.changed()
