"""``FusedConvBN``: one conv + BatchNorm (+ residual) (+ ReLU) as a single module."""
import torch
from torch import nn

from . import ops
from .folding import FoldCache, LoadsAtomically
from .supported import check_foldable


class FusedConvBN(LoadsAtomically, nn.Module):
    """``relu?(bn(conv(x)) + residual?)`` with ``conv`` and ``bn`` folded into one kernel.

    Eval mode runs one fused launch (see ``fusedres.ops`` for which backend); train mode, and
    eval mode while autograd is recording, run exactly the eager modules, so batch statistics,
    running-stat updates and gradients are eager's.  ``conv`` and ``bn`` stay submodules, so
    the state_dict keys are the eager ones (``conv.weight``, ``bn.running_mean``, ...).
    Folded weights are rebuilt whenever a source tensor changes; they are never stale.
    Returns channels_last tensors on the fused path.  Safe to call from several threads at
    once, also while another thread loads weights (see ``fusedres.folding.FoldCache``).
    ``conv`` and ``bn`` must be ``nn.Conv2d`` and ``nn.BatchNorm2d`` themselves, not subclasses
    (which may change what forward computes): ``UnsupportedModelError`` otherwise, as from
    ``fuse`` (see ``fusedres.supported.check_foldable``).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool = True):
        super().__init__()
        check_foldable(conv, bn)
        self.conv = conv
        self.bn = bn
        self.relu = bool(relu)
        self._fold = FoldCache()

    def forward(self, x: torch.Tensor, residual: torch.Tensor = None) -> torch.Tensor:
        if self.training or ops.records_autograd(x, self.conv, self.bn):
            y = self.bn(self.conv(x))
            if residual is not None:
                y = y + residual
            return torch.relu(y) if self.relu else y
        return ops.conv_bn_act(x, self.conv, self.bn, self._fold, relu=self.relu,
                                residual=residual)

    def extra_repr(self) -> str:
        return f"relu={self.relu}"
