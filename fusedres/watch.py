"""``ModelWatch``: whether anything a model's fused launches depend on may have changed since
a moment, checked in one pass over the model (CUDA graph replays and launch plans rely on
it instead of checking each launch's sources)."""
import operator

from torch import nn
from torch.nn.modules import module as nn_module

from .folding import TensorWatch, loads_generation


class _Registrations:
    """Counts every parameter, buffer and submodule registered on any module, anywhere.

    Replacing a model's part (``block.bn2 = ...``, ``load_state_dict(assign=True)``,
    ``model.layer1[0] = ...``) goes through these registrations, so an unchanged count proves
    the model's structure unchanged without walking ``modules()`` (about 0.1 ms on
    resnet50) on every call.  The hooks are global, so they are installed once, lazily, by
    the first ``ModelWatch``.
    """

    count = 0
    _installed = False

    @classmethod
    def install(cls):
        if not cls._installed:
            for register in (nn_module.register_module_parameter_registration_hook,
                             nn_module.register_module_buffer_registration_hook,
                             nn_module.register_module_module_registration_hook):
                register(cls._bump)
            cls._installed = True

    @classmethod
    def _bump(cls, module, name, value):
        cls.count += 1  # returns None: the registered value is left as it is


_EPS = operator.attrgetter("eps")


class ModelWatch:
    """Tells whether anything the model's captured graphs depend on may have changed.

    ``full=True``: its parameters and buffers (``TensorWatch``), which ones they are, and
    BatchNorm ``eps``.  The tensors are collected once; ``changed()`` walks the model again
    only after a registration somewhere in the process (see ``_Registrations``), so the
    common call costs one data-pointer and one version read per tensor.

    ``full=False``: only which tensors they are and whether a fused module's
    ``load_state_dict`` ran since (two counter reads); in-place edits, ``.to()`` and ``eps``
    are not seen.
    """

    def __init__(self, model: nn.Module, full: bool = True):
        _Registrations.install()
        self._model = model
        self._full = full
        self._registrations = _Registrations.count
        self._loads = loads_generation()
        self._tensors, self._norms = self._collect()
        self._watch = TensorWatch(self._tensors)
        self._eps = tuple(map(_EPS, self._norms))

    def _collect(self):
        # num_batches_tracked included: a train-mode forward updates the running statistics
        # without bumping their version counters, only this counter's.
        tensors = [*self._model.parameters(), *self._model.buffers()]
        norms = [m for m in self._model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return tensors, norms

    def changed(self) -> bool:
        if _Registrations.count != self._registrations:
            # Something registered a part somewhere (maybe in another model): look once.
            tensors, norms = self._collect()
            if not (self._watch.watches(tensors) and len(norms) == len(self._norms)
                    and all(map(operator.is_, norms, self._norms))):
                return True
            self._registrations = _Registrations.count
        if not self._full:
            return loads_generation() != self._loads
        return self._watch.changed() or tuple(map(_EPS, self._norms)) != self._eps


def registrations() -> int:
    """Counts every parameter, buffer and submodule registration anywhere in the process (see
    ``_Registrations``): unchanged, no model's structure changed."""
    _Registrations.install()
    return _Registrations.count
