"""Models and runners several test files build: eager and fused twins, a fused model made of
inference tensors and its float64 reference, a tiny fused model, and the CUDA-graph runner
with a stand-in capture for CPU."""
import torch
import torchvision
from torch import nn

import fusedres
from fusedres.cuda_graphs import CUDAGraphRunner, _Captured

from .conftest import DEVICE
from .numerics import randomize_bn


def eager_and_fused(name):
    """torchvision's model ``name`` with random BN statistics, and its fusion."""
    eager = randomize_bn(getattr(torchvision.models, name)()).eval().to(DEVICE)
    return eager, fusedres.fuse(eager)


def built_in_inference_mode(name="resnet18"):
    """A fused model whose every parameter and buffer is an inference tensor, as serving code
    gets by building or loading the model under ``torch.inference_mode()``."""
    with torch.inference_mode():
        fused = fusedres.fuse(randomize_bn(getattr(torchvision.models, name)()).eval())
    assert all(t.is_inference() for t in fused.state_dict().values())
    return fused


def float64_reference(fused, x):
    """torchvision's eager model holding ``fused``'s current state, in float64."""
    eager = torchvision.models.resnet18().eval()
    eager.load_state_dict({k: v.clone() for k, v in fused.state_dict().items()})
    with torch.no_grad():
        return eager.double()(x.double())


class _Replay:
    def __init__(self, replay):
        self.replay = replay


class CPUGraphRunner(CUDAGraphRunner):
    """The runner with "capture" replaced by recording the forward to rerun on replay: every
    decision about which graph to keep, pad to, re-capture or drop is the real runner's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.captures = []

    @staticmethod
    def _check_input(x):
        pass

    def _capture(self, x):
        self.captures.append(x.shape[0])
        with torch.no_grad():
            out = self.model(x)

        def replay():
            with torch.no_grad():
                out.copy_(self.model(x))

        return _Captured(_Replay(replay), x, out)


def tiny_fused_model():
    """Stem + a BasicBlock with a downsample, 3 -> 8 -> 16 channels: cheap at any batch."""
    conv, bn = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
    model = nn.Sequential(fusedres.FusedConvBN(conv, bn),
                          fusedres.FusedBasicBlock(8, 16, stride=2, downsample=downsample),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return randomize_bn(model).eval()
