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
import operator

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
        self._modules = self._walked = self._steps = ()
        self._parameters = ()

    def steps(self, model: nn.Module, x: torch.Tensor):
        """None, or the steps (callables) of ``model.plan_walk()`` (``block_walk``) when this
        forward of ``model`` on ``x`` may replay its sites' plans unchecked
        (``FoldCache.replay``).  Drops every plan first when anything changed."""
        if model.training or not ops.plans_launches(x) or ops.tracing():
            return None
        if ops.autocast_enabled(x):
            return None
        if self._watch is None or self._restructured(model) or self._watch.changed():
            self._renew(model)
        if torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self._parameters)):
            return None
        if (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or any(m._forward_hooks or m._forward_pre_hooks or m.training
                       for m in self._walked)):
            return None  # hooks to call, or a block in train mode (eager there)
        return self._steps

    def _restructured(self, model):
        """Whether ``model``'s modules may be others than at the last renewal: only after a
        registration somewhere in the process (a part replaced, or any module built
        anywhere), and then only if its module list differs (~0.1 ms on ResNet-50), so that
        building an unrelated module keeps the plans."""
        count = registrations()
        if count == self._registrations:
            return False
        modules = list(model.modules())
        if len(modules) != len(self._modules) or not all(map(operator.is_, modules,
                                                             self._modules)):
            return True
        self._registrations = count
        return False

    def _renew(self, model):
        self._registrations = registrations()
        self._modules = tuple(model.modules())
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
    each run of such blocks, one after another in the walk, is one step (``replay_blocks``);
    any other block or layer is a step itself."""
    walked, steps, run = [], [], []

    def end_run():
        if run:
            steps.append(functools.partial(replay_blocks, tuple(run)))
            run.clear()

    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        if type(layer) is not nn.Sequential:
            end_run()
            steps.append(layer)
            continue
        walked.append(layer)
        for block in layer:
            if replayable(block):
                walked.append(block)
                # Read once: replacing either is a registration, which renews the walk.
                run.append((block, tuple(block._folds), block.downsample is not None))
            else:
                end_run()
                steps.append(block)
    end_run()
    return walked, steps


def replay_blocks(blocks, x):
    """Fused residual blocks' forwards, one after another, each launch replaying its site's
    plan unchecked where it has one (else ``block._launch(i, out, x)``, the normal launch).
    ``blocks``: ``(block, caches, downsampled)`` per block: its FoldCaches (``_folds``), one
    per launch, and whether the last launch takes the block's input as its shortcut's input
    (the downsample fused into it), else as its residual.

    The first launch checks its plan's guards; while every launch since replayed, each next
    plan skips the guards that ``LaunchPlan.follows`` proves: its input is the previous
    plan's fresh output, the block's input was checked or made by a plan, and nothing else
    ran in between."""
    previous = None  # the plan that returned ``out``, while every launch replayed since
    for block, caches, downsampled in blocks:
        last = len(caches) - 1
        out = x
        given = None if previous is None else previous.out_sig  # what x is known to match
        for i, cache in enumerate(caches):
            residual, xs = (None, None) if i < last else (None, x) if downsampled else (x, None)
            plan = cache.plans.get(out.shape)
            if plan is None:
                y = None
            elif previous is not None and plan.follows(previous, given, residual, xs):
                y = plan.launch(out, residual, xs)
            else:
                y = plan(out, residual, xs)
                if i == 0:
                    given = plan.x_sig  # (when None comes back, the chain ends anyway)
            if y is None:
                out, previous = block._launch(i, out, x), None
            else:
                out, previous = y, (plan if i == 0 or previous is not None else None)
        x = out
    return x
