"""The fused ResNet family: torchvision's structure and names, fused eval-mode forward.

Module names and parameters are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv2``,
``layer2.0.downsample.0``, ``fc`` ...), so state_dicts load either way.  In eval mode, with
autograd not recording, each block runs as fused launches (see ``fusedres.ops``):

    stem        conv1+bn1+relu                                  1 launch, then max-pool
    BasicBlock  conv1+bn1+relu; conv2+bn2(+downsample)+add+relu  2 launches
    Bottleneck  conv1+bn1+relu; conv2+bn2+relu;
                conv3+bn3(+downsample)+add+relu                  3 launches

The downsample shortcut (1x1 conv + BN) is accumulated into the block's last launch.  On
the GPU each launch site keeps a launch plan of its last launch, and a forward that the
model's ``PlanGate`` trusts replays them, walking the blocks directly (fusedres/plans.py).
Train mode, and eval mode while autograd records, run torchvision's eager forward.
"""
import torch
from torch import nn

from . import ops
from .folding import FoldCache, LoadsAtomically
from .plans import PlanGate, block_walk


def _conv3x3(in_planes, out_planes, stride=1, groups=1, dilation=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, bias=False, dilation=dilation)


def _conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class _FusedBlock(LoadsAtomically, nn.Module):
    """Shared machinery of the two block types: the chain of (conv, bn) pairs, of which all
    but the last get a ReLU and the last gets the residual (identity or downsample)."""

    expansion = 1
    _PAIRS = ()  # names of the (conv, bn) attributes in order

    def _init_caches(self):
        # One FoldCache per launch; plain attributes, so they stay out of the state_dict.
        self._folds = [FoldCache() for _ in self._PAIRS]

    def _eager_forward(self, x):
        identity = x
        out = x
        for i, (conv, bn) in enumerate(self._PAIRS):
            out = getattr(self, bn)(getattr(self, conv)(out))
            if i < len(self._PAIRS) - 1:
                out = self.relu(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)

    def forward(self, x):
        if self.training or ops.records_autograd(x, self):
            return self._eager_forward(x)
        out = x
        for i in range(len(self._folds)):
            out = self._launch(i, out, x)
        return out

    def _launch(self, i, out, x):
        """Launch ``i``: conv-BN-ReLU, the last one with the residual or the downsample."""
        conv, bn = (getattr(self, name) for name in self._PAIRS[i])
        if i < len(self._PAIRS) - 1:
            return ops.conv_bn_act(out, conv, bn, self._folds[i], relu=True)
        if self.downsample is not None:
            # The downsample (1x1 conv + BN) accumulates into this launch's tile.
            return ops.conv_bn_act(out, conv, bn, self._folds[i], relu=True,
                                   shortcut=(self.downsample[0], self.downsample[1], x))
        return ops.conv_bn_act(out, conv, bn, self._folds[i], relu=True, residual=x)


class FusedBasicBlock(_FusedBlock):
    """torchvision's BasicBlock (two 3x3 convolutions), fused."""

    expansion = 1
    _PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self._init_caches()


class FusedBottleneck(_FusedBlock):
    """torchvision's Bottleneck (1x1, 3x3, 1x1 with stride on the 3x3), fused."""

    expansion = 4
    _PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
                 dilation=1, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self._init_caches()


class FusedResNet(LoadsAtomically, nn.Module):
    """torchvision's ResNet with fused blocks; same constructor, names and state_dict."""

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1,
                 width_per_group=64, replace_stride_with_dilation=None, norm_layer=None):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element "
                             f"tuple, got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, FusedBottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, FusedBasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)
        self._stem_fold = FoldCache()
        self._plan_gate = PlanGate()

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        previous_dilation, norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups,
                                base_width=self.base_width, dilation=self.dilation,
                                norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def _stem(self, x):
        if self.training or ops.records_autograd(x, self.conv1, self.bn1):
            return self.relu(self.bn1(self.conv1(x)))
        return ops.conv_bn_act(x, self.conv1, self.bn1, self._stem_fold, relu=True)

    def plan_walk(self):
        """For ``PlanGate``: the layers and fused blocks a forward that replays launch plans
        walks past, and the steps it calls instead (fusedres/plans.py)."""
        return block_walk(self, lambda block: isinstance(block, _FusedBlock))

    def forward(self, x):
        steps = self._plan_gate.steps(self, x)
        if steps is None:
            x = self.maxpool(self._stem(x))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        else:
            # Launch plans replayed (fusedres/plans.py), the blocks walked without calls.
            y = self._stem_fold.replay(x)
            x = self.maxpool(self._stem(x) if y is None else y)
            for step in steps:
                x = step(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)
