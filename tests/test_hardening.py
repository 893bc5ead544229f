"""Defects found by using the library as a user would (issue 9), one test or class each."""
import pytest
import torch
import torchvision
from torch import nn

import fusedres


class TestFuseLeavesModelUntouchedOnError:
    """Issue 9, item 1: nothing is fused partially."""

    @pytest.mark.parametrize("inplace", [True, False])
    def test_unsupported_later_block(self, inplace):
        model = torchvision.models.resnet18()
        model.layer3[0] = nn.Sequential(nn.Conv2d(128, 256, 3, 2, 1))
        blocks = {f"layer{i}.{j}": block
                  for i in range(1, 5) for j, block in enumerate(getattr(model, f"layer{i}"))}
        params = dict(model.named_parameters())
        with pytest.raises(fusedres.UnsupportedModelError, match=r"layer3\.0: unsupported block"):
            fusedres.fuse(model, inplace=inplace)
        for name, block in blocks.items():
            i, j = name[len("layer"):].split(".")
            now = getattr(model, f"layer{i}")[int(j)]
            assert now is block, f"{name} was replaced by {type(now).__qualname__}"
            if name != "layer3.0":
                assert type(now) is torchvision.models.resnet.BasicBlock, name
        assert list(dict(model.named_parameters())) == list(params)
        for name, p in model.named_parameters():
            assert p is params[name], name
