"""``PlanGate``: once per forward, whether a fused model may replay its launch plans without
checking each launch's folded weights.

Each launch site keeps launch plans beside its folded weights (``FoldCache.add_plan``); a
plan replays the site's launch in a few microseconds (kernels/conv/plan.py).  Checking the
site's sources before each replay (``FoldCache.get``, ~5 us) would cost as much as the replay,
so the model checks all of them at once instead, at the start of the forward
(``ModelWatch``: every parameter, buffer and BatchNorm ``eps``, and its structure), and drops
every site's plans whenever anything changed.  Plans in use were then built after the last
change, from folds that were current: never stale.

A forward replays plans (is "trusted") only where nothing else would be skipped or
mis-served: eval mode (the model's and every walked module's), launch plans on
(``ops.plans_launches``), no tracing, no autocast, autograd not recording, and no forward
hooks on the modules a replay walks past without calling them (the model's
``plan_walk()``: its layers and blocks) nor global ones.  Otherwise the model runs its
modules as usual, and each launch checks its own folds before using its plan.
"""
import functools

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from . import ops
from .folding import fold_caches
from .watch import ModelWatch, registrations


class PlanGate:
    """The per-model state behind ``steps``; a plain attribute of the model (copies and
    pickles start afresh)."""

    def __init__(self):
        self._watch = None
        self._registrations = None
        self._walked = self._steps = ()
        self._parameters = ()

    def steps(self, model: nn.Module, x: torch.Tensor):
        """None, or the steps (callables) of ``model.plan_walk()`` (``block_walk``) when this
        forward of ``model`` on ``x`` may replay its sites' plans unchecked
        (``FoldCache.replay``).  Drops every plan first when anything changed."""
        if model.training or not ops.plans_launches(x) or ops.tracing():
            return None
        if ops.autocast_enabled(x):
            return None
        if self._watch is None or registrations() != self._registrations or self._watch.changed():
            self._renew(model)
        if torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self._parameters)):
            return None
        if (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks or m.training
                       for m in self._walked)):
            return None  # hooks to call, or a block in train mode (eager there)
        return self._steps

    def _renew(self, model):
        self._registrations = registrations()
        walked, steps = model.plan_walk()
        self._walked, self._steps = tuple(walked), tuple(steps)
        self._parameters = tuple(model.parameters())
        for cache in fold_caches(model.modules()):
            cache.forget_plans()
        self._watch = ModelWatch(model)

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


def block_walk(model, replayable):
    """``plan_walk()`` of a ResNet with ``layer1`` .. ``layer4``: the layers (when
    ``nn.Sequential``) and the blocks for which ``replayable(block)`` holds are walked past;
    the steps are ``replay_block`` for those blocks, any other block or layer itself."""
    walked, steps = [], []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        if type(layer) is not nn.Sequential:
            steps.append(layer)
            continue
        walked.append(layer)
        for block in layer:
            if replayable(block):
                walked.append(block)
                steps.append(functools.partial(replay_block, block))
            else:
                steps.append(block)
    return walked, steps


def replay_block(block, x):
    """A fused residual block's forward with each launch replaying its site's plan unchecked
    where it has one (else ``block._launch(i, out, x)``, the normal launch).  The block has
    ``_folds`` (one per launch), ``downsample`` (None: identity residual; else fused into
    the last launch) and ``_launch``."""
    folds = block._folds
    out = x
    for i in range(len(folds) - 1):
        plan = folds[i].plans.get(out.shape)
        y = None if plan is None else plan(out)
        out = block._launch(i, out, x) if y is None else y
    plan = folds[-1].plans.get(out.shape)
    y = None
    if plan is not None:
        y = plan(out, x) if block.downsample is None else plan(out, None, x)
    return block._launch(len(folds) - 1, out, x) if y is None else y
