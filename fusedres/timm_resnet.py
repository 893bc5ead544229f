"""``fuse()`` for timm's ResNet family (``timm.models.resnet.ResNet``): ResNet, ResNet-C/D/S/T
deep stems, ResNet-D average-pool downsample, ResNeXt, wide ResNets, SE / ECA blocks.

Imported only by ``fusedres.fuse`` (``fusedres.fusing``) when it is given a timm ResNet, so
timm is already imported; ``import fusedres`` never imports this module or timm.  Never
imports the torchvision converter; the checks both share are ``fusedres.supported``.

The fused model is the same object type family as timm's: fusing swaps the class of the
(copied) model and of each block to a subclass of timm's own that overrides only the forward
(``forward_features`` for the model), so module names, state_dict keys, attributes and timm's
model API (``forward_head``, ``reset_classifier``, ``get_classifier``, ``pretrained_cfg``,
``default_cfg``, ``num_features``, ``feature_info``, ...) are timm's.  In eval mode, with
autograd not recording (see ``fusedres.ops``):

    stem        each conv-BN-ReLU one launch (deep stems: three); ResNet-RS's conv stem
                pool (``replace_stem_pool``) one more; a max-pool runs as timm's
    block       every conv-BN-ReLU one launch; the last conv-BN with the residual and the
                ReLU in its epilogue, the 1x1 downsample accumulated into that launch, and
                ResNet-D's 2x2 average-pool downsample pooled inside it too
    SE / ECA    last conv-BN one launch without residual; the attention's gate from timm's
                own layers; the downsample (if any) one launch; then gate * y + shortcut
                and the ReLU as one elementwise pass (``ops.scale_add_act``)

On the GPU, a forward that the model's ``PlanGate`` trusts replays launch plans, walking
the attention-free blocks directly (fusedres/plans.py).  Train mode, and eval mode while
autograd records, run timm's eager forward.  timm's ``forward_intermediates`` (not
overridden) runs the stem eagerly and the blocks fused.
"""
import copy

from timm.layers import DropBlock2d, DropPath
from timm.layers.eca import EcaModule
from timm.layers.squeeze_excite import SEModule
from timm.models import resnet as timm_resnet
from torch import nn

from . import ops
from .folding import FoldCache, LoadsAtomically
from .plans import PlanGate, block_walk
from .supported import (UnsupportedModelError, check_children, check_foldable, check_relu,
                        check_shortcut_conv, expect_type, type_name)

# The timm architectures the tests check against timm's eager model (tests/test_timm_resnet.py
# parametrises over this tuple; the README's list is checked against it).
CHECKED_ARCHITECTURES = (
    "resnet10t", "resnet18", "resnet18d", "resnet26t", "resnet34d", "resnet50", "resnet50c",
    "resnet50d", "resnet50s", "resnet50t", "resnet101d", "resnet152d", "resnext50_32x4d",
    "resnext50d_32x4d", "wide_resnet50_2", "seresnet50", "seresnext26d_32x4d",
    "ecaresnet26t", "ecaresnet50d", "resnetrs50",
)

_MODEL_CHILDREN = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4",
                   "global_pool", "fc")


# ---------------------------------------------------------------- attention gates

def _se_gate(se, x):
    """timm's ``SEModule.forward`` up to, not including, its final ``x * gate``."""
    s = x.mean((2, 3), keepdim=True)
    if se.add_maxpool:
        s = 0.5 * s + 0.5 * x.amax((2, 3), keepdim=True)
    return se.gate(se.fc2(se.act(se.bn(se.fc1(s)))))


def _eca_gate(eca, x):
    """timm's ``EcaModule.forward`` up to, not including, its final ``x * gate``."""
    y = eca.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
    if eca.conv2 is not None:
        y = eca.conv2(eca.act(y))
    return eca.gate(y).view(x.shape[0], -1, 1, 1)


# Attention modules whose output is ``x * gate(x)``: the gate is computed with the module's
# own layers, and the multiply moves into the block's last elementwise pass.  Exact classes
# only (a subclass may change forward); tests/test_timm_resnet.py checks each against its module.
ATTENTION_GATES = {SEModule: _se_gate, EcaModule: _eca_gate}


# ---------------------------------------------------------------- fused classes

def _pooled(downsample):
    """Whether a (checked) downsample averages 2x2 windows before its 1x1 convolution."""
    return type(downsample[0]) is nn.AvgPool2d


class _FusedTimmBlock(LoadsAtomically):
    """The fused forward of timm's BasicBlock / Bottleneck (mixed in before timm's class)."""

    _PAIRS = ()  # (conv, bn) attribute names in order

    def _init_caches(self):
        # Plain attributes, so they stay out of the state_dict (forget_folds finds them).
        self._folds = [FoldCache() for _ in self._PAIRS]
        self._shortcut_fold = FoldCache()  # the downsample's own launch in SE / ECA blocks

    def forward(self, x):
        if self.training or ops.records_autograd(x, self):
            return super().forward(x)
        out = x
        for i in range(len(self._folds) - 1):
            out = self._launch(i, out, x)
        if self.se is None:
            return self._launch(len(self._folds) - 1, out, x)
        # The gate needs the whole of bn(conv(out)) before anything is added to it.
        conv, bn = (getattr(self, name) for name in self._PAIRS[-1])
        y = ops.conv_bn_act(out, conv, bn, self._folds[-1], relu=False)
        gate = ATTENTION_GATES[type(self.se)](self.se, y)
        shortcut, ds = x, self.downsample
        if ds is not None:
            shortcut = ops.conv_bn_act(ds[0](x) if _pooled(ds) else x, ds[-2], ds[-1],
                                       self._shortcut_fold, relu=False)
        return ops.scale_add_act(y, gate.to(y.dtype), shortcut.to(y.dtype), relu=True)

    def _launch(self, i, out, x):
        """Launch ``i`` of a block without attention: conv-BN-ReLU, the last one with the
        residual or the (pooled) 1x1 downsample."""
        conv, bn = (getattr(self, name) for name in self._PAIRS[i])
        cache = self._folds[i]
        if i < len(self._PAIRS) - 1:
            return ops.conv_bn_act(out, conv, bn, cache, relu=True)
        ds = self.downsample
        if ds is None:
            return ops.conv_bn_act(out, conv, bn, cache, relu=True, residual=x)
        return ops.conv_bn_act(out, conv, bn, cache, relu=True, shortcut=(ds[-2], ds[-1], x),
                               shortcut_pool=_pooled(ds))


class FusedTimmBasicBlock(_FusedTimmBlock, timm_resnet.BasicBlock):
    """timm's BasicBlock, fused."""

    _PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))


class FusedTimmBottleneck(_FusedTimmBlock, timm_resnet.Bottleneck):
    """timm's Bottleneck, fused."""

    _PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


class FusedTimmResNet(LoadsAtomically, timm_resnet.ResNet):
    """timm's ResNet with a fused stem and fused blocks; timm's names, state_dict and API."""

    def _init_caches(self):
        self._stem_folds = [FoldCache() for _ in self._stem_pairs()]
        self._stem_pool_fold = FoldCache()
        self._plan_gate = PlanGate()

    def plan_walk(self):
        """For ``PlanGate``: the layers and attention-free fused blocks a forward that
        replays launch plans walks past, and the steps it calls instead
        (fusedres/plans.py)."""
        return block_walk(self, lambda block: isinstance(block, _FusedTimmBlock)
                          and block.se is None)

    def _stem_pairs(self):
        """The stem's (conv, bn) pairs, each followed by a ReLU (looked up on every call, so
        a replaced submodule is never missed)."""
        if isinstance(self.conv1, nn.Sequential):  # deep stem: 3 x conv-BN-act, bn1 last
            c = self.conv1
            return ((c[0], c[1]), (c[3], c[4]), (c[6], self.bn1))
        return ((self.conv1, self.bn1),)

    def _stem(self, x, replay=False):
        """The stem; ``replay``: the gate vouched for this forward (each launch replays its
        plan unchecked where it has one)."""
        pairs = self._stem_pairs()
        if not replay and ops.records_autograd(x, *(m for pair in pairs for m in pair),
                                               self.maxpool):
            return self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for (conv, bn), cache in zip(pairs, self._stem_folds):
            y = cache.replay(x) if replay else None
            x = ops.conv_bn_act(x, conv, bn, cache, relu=True) if y is None else y
        if isinstance(self.maxpool, nn.Sequential):  # replace_stem_pool: conv-BN-act
            y = self._stem_pool_fold.replay(x) if replay else None
            if y is not None:
                return y
            return ops.conv_bn_act(x, self.maxpool[0], self.maxpool[1], self._stem_pool_fold,
                                   relu=True)
        return self.maxpool(x)

    def forward_features(self, x):
        if self.training:
            return super().forward_features(x)
        steps = self._plan_gate.steps(self, x)
        if steps is None:
            x = self._stem(x)
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # Launch plans replayed (fusedres/plans.py), the blocks walked without calls.
        x = self._stem(x, replay=True)
        for step in steps:
            x = step(x)
        return x


_FUSED_BLOCKS = {timm_resnet.BasicBlock: FusedTimmBasicBlock,
                 timm_resnet.Bottleneck: FusedTimmBottleneck}
# Children every block has (timm's names), and those it may have (None attributes are not
# children).
_BLOCK_CHILDREN = {
    timm_resnet.BasicBlock: ("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2",
                             "act2"),
    timm_resnet.Bottleneck: ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2",
                             "aa", "conv3", "bn3", "act3"),
}
_BLOCK_OPTIONAL = ("se", "downsample", "drop_path")


# ---------------------------------------------------------------- validation

def _check_stem(model):
    conv1 = model.conv1
    if isinstance(conv1, nn.Sequential):
        if len(conv1) != 7:
            raise UnsupportedModelError(f"conv1: expected a deep stem of 3 conv-BN-act "
                                        f"(7 modules), got {len(conv1)} modules")
        check_foldable(conv1[0], conv1[1], "conv1.0/conv1.1")
        check_relu(conv1[2], "conv1.2")
        check_foldable(conv1[3], conv1[4], "conv1.3/conv1.4")
        check_relu(conv1[5], "conv1.5")
        check_foldable(conv1[6], model.bn1, "conv1.6/bn1")
    else:
        check_foldable(conv1, model.bn1, "conv1/bn1")
    check_relu(model.act1, "act1")
    pool = model.maxpool
    if isinstance(pool, nn.Sequential) and len(pool) == 3 and type(pool[0]) is nn.Conv2d:
        # replace_stem_pool (ResNet-RS) without anti-aliasing: conv-BN-act.
        check_foldable(pool[0], pool[1], "maxpool.0/maxpool.1")
        check_relu(pool[2], "maxpool.2")
    elif type(pool) is not nn.MaxPool2d:
        raise UnsupportedModelError(
            f"maxpool: expected nn.MaxPool2d or Sequential(Conv2d, BatchNorm2d, ReLU) "
            f"(anti-aliased stem pools are not fused), got {pool!r}")


def _check_downsample(ds, where):
    if not isinstance(ds, nn.Sequential) or len(ds) not in (2, 3):
        raise UnsupportedModelError(f"{where}: expected Sequential([AvgPool2d,] Conv2d 1x1, "
                                    f"BatchNorm2d), got {ds!r}")
    conv, bn = ds[-2], ds[-1]
    check_foldable(conv, bn, where)
    check_shortcut_conv(conv, where)
    if len(ds) == 3:
        pool = ds[0]
        if type(pool) is nn.Identity:
            return
        # AvgPool2dSame (dilated ResNet-D) subclasses AvgPool2d: exact class only.
        expect_type(pool, (nn.AvgPool2d,), f"{where}.0", "nn.AvgPool2d or nn.Identity")
        if not (pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
                and pool.padding in (0, (0, 0)) and pool.ceil_mode
                and not pool.count_include_pad and pool.divisor_override is None
                and conv.stride == (1, 1)):
            raise UnsupportedModelError(
                f"{where}: only AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) before "
                f"a stride-1 1x1 convolution is fused, got {pool!r}, {conv!r}")


def _check_block(block, where):
    kind = type(block)
    if kind not in _FUSED_BLOCKS:
        raise UnsupportedModelError(f"{where}: unsupported block type {type_name(block)}; "
                                    "expected timm's BasicBlock or Bottleneck")
    check_children(block, _BLOCK_CHILDREN[kind], _BLOCK_OPTIONAL, where)
    for conv, bn in _FUSED_BLOCKS[kind]._PAIRS:
        check_foldable(getattr(block, conv), getattr(block, bn), f"{where}.{conv}/{bn}")
    acts = ("act1", "act2") + (("act3",) if kind is timm_resnet.Bottleneck else ())
    for act in acts:
        check_relu(getattr(block, act), f"{where}.{act}")
    expect_type(block.aa, (nn.Identity,), f"{where}.aa",
                "nn.Identity (anti-aliasing / blur pooling is not fused)")
    # Both are no-ops in eval mode, the only mode that runs fused; timm's own classes only.
    expect_type(block.drop_block, (nn.Identity, DropBlock2d), f"{where}.drop_block",
                "nn.Identity or timm's DropBlock2d")
    if block.drop_path is not None:
        expect_type(block.drop_path, (DropPath,), f"{where}.drop_path",
                    "None or timm's DropPath")
    if block.se is not None:
        expect_type(block.se, tuple(ATTENTION_GATES), f"{where}.se",
                    "None, timm's SEModule or EcaModule")
    if block.downsample is not None:
        _check_downsample(block.downsample, f"{where}.downsample")


def check_model(model):
    """Raise UnsupportedModelError naming the first part of the timm ResNet ``model`` that
    fusedres cannot fuse exactly; return the blocks to fuse.  Changes nothing."""
    if type(model) is not timm_resnet.ResNet:
        raise UnsupportedModelError(f"model: expected timm's ResNet itself, got "
                                    f"{type_name(model)} (a subclass may change forward)")
    check_children(model, _MODEL_CHILDREN, (), "model")
    _check_stem(model)
    blocks = []
    for i in range(1, 5):
        layer = getattr(model, f"layer{i}")
        expect_type(layer, (nn.Sequential,), f"layer{i}", "nn.Sequential")
        for j, block in enumerate(layer):
            _check_block(block, f"layer{i}.{j}")
            blocks.append(block)
    return blocks


def fuse_timm(model, *, inplace=False):
    """``fusedres.fuse`` for timm's ResNet (see the module docstring).  The whole model is
    checked before anything changes; with ``inplace=True`` the model itself becomes the
    fused model (its class is swapped), otherwise a deep copy does."""
    if isinstance(model, FusedTimmResNet):
        return model if inplace else copy.deepcopy(model)
    check_model(model)
    if not inplace:
        model = copy.deepcopy(model)
    for block in check_model(model):  # the copy's blocks
        block.__class__ = _FUSED_BLOCKS[type(block)]
        block._init_caches()
    model.__class__ = FusedTimmResNet
    model._init_caches()
    return model
