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
mis-served: eval mode, launch plans on (``ops.plans_launches``), no tracing, no autocast,
autograd not recording, and no forward hooks on the modules a replay walks past without
calling them (the model's ``plan_walk()``: its layers and blocks) nor global ones.  Otherwise the model runs its modules as
usual, and each launch checks its own folds before using its plan.
"""
import torch
from torch import nn
from torch.nn.modules import module as nn_module

from . import ops
from .folding import fold_caches
from .watch import ModelWatch, registrations


class PlanGate:
    """The per-model state behind ``trusted``; a plain attribute of the model (copies and
    pickles start afresh)."""

    def __init__(self):
        self._watch = None
        self._registrations = None
        self._walked = self._steps = ()
        self._parameters = ()

    def steps(self, model: nn.Module, x: torch.Tensor):
        """None, or the steps (callables) of ``model.plan_walk()`` when this forward of
        ``model`` on ``x`` may replay its sites' plans unchecked (``FoldCache.replay``).
        Drops every plan first when anything changed."""
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
                or any(m._forward_hooks or m._forward_pre_hooks for m in self._walked)):
            return None
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
