"""The fused shortcut's pooled form (kernels/conv/walk_shortcut.py): ResNet-D's
AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) + 1x1 inside the kernel, under every
K walk that can carry it.  (The plain 1x1 shortcut is in test_kernel.py and test_split_k.py.)"""
import pytest
import torch

from fusedres.kernels import conv_bn_act, pack_weight

from ...conftest import DEVICE
from .cases import DTYPES, check_pooled_shortcut


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hs,ws", [(5, 7), (4, 5), (6, 4), (1, 1)])
def test_pooled_shortcut_matches_float64(hs, ws, dtype):
    """Odd sizes have border windows of 1 and 2 pixels."""
    check_pooled_shortcut(hs, ws, dtype)


def test_pooled_shortcut_with_split_k(split_k):
    # BLOCK_K=16: 2 main steps and 3 shortcut steps in 3 slices, one of them across both.
    launches = check_pooled_shortcut(5, 7, torch.float32, variant=split_k)
    assert [launch.config.split_k for launch in launches] == [3]


def test_pooled_shortcut_with_tma_patch_tiles(tma):
    """ResNet-D BasicBlock's second convolution (3x3/s1, resnet18d/34d) takes TMA patch tiles
    on sm_90: the pooled shortcut's windows follow each patch's pixels."""
    launches = check_pooled_shortcut(9, 7, torch.float16, kernel=3, c_in=64, variant=tma)
    assert [launch.walk for launch in launches] == ["tma-patches"]


@pytest.mark.parametrize("xs_size,stride,match", [
    ((5, 5), 1, "averages 2x2 windows at stride 2"),
    ((7, 5), 2, r"\(2x2 average pool\) does not produce"),
], ids=["stride", "size"])
def test_pooled_shortcut_rejects_mismatched_geometry(xs_size, stride, match):
    x = torch.randn(1, 16, 3, 3, device=DEVICE)
    w = pack_weight(torch.randn(16, 16, 1, 1), torch.float32).to(DEVICE)
    xs = torch.randn(1, 16, *xs_size, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        conv_bn_act(x, w, torch.zeros(16, device=DEVICE), kernel_size=1,
                    shortcut=(xs, w, stride), shortcut_pool=True)
