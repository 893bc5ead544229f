"""``ModelWatch``: whether anything a model's fused launches depend on may have changed since
a moment, checked in one pass over the model (CUDA graph replays and launch plans rely on
it instead of checking each launch's sources)."""
import itertools
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
    common call costs one identity, one data-pointer and one version read per tensor.  The
    identities are read from the modules' parameter and buffer tables on every call:
    ``Module._apply`` (``.half()`` on a buffer of another dtype, ``.to()`` with
    ``torch.__future__.set_overwrite_module_params_on_conversion(True)``) writes new tensors
    into those tables directly, which no registration hook sees.

    ``full=False``: only registrations (replaced parts) and whether a fused module's
    ``load_state_dict`` ran since (two counter reads); in-place edits, ``.to()`` and ``eps``
    are not seen.
    """

    def __init__(self, model: nn.Module, full: bool = True):
        _Registrations.install()
        self._model = model
        self._full = full
        self._registrations = _Registrations.count
        self._loads = loads_generation()
        self._tables, self._norms = self._collect()
        self._sizes = list(map(len, self._tables))
        self._entries = list(itertools.chain.from_iterable(map(dict.values, self._tables)))
        self._watch = TensorWatch(t for t in self._entries if t is not None)
        self._eps = tuple(map(_EPS, self._norms))

    def _collect(self):
        # Every parameter and buffer, num_batches_tracked included: a train-mode forward
        # updates the running statistics without bumping their version counters, only this
        # counter's.  Only the tables that hold any: an entry is added by a registration.
        modules = list(self._model.modules())
        tables = [table for m in modules for table in (m._parameters, m._buffers) if table]
        norms = [m for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return tables, norms

    def changed(self) -> bool:
        if _Registrations.count != self._registrations:
            # Something registered a part somewhere (maybe in another model): look once.
            tables, norms = self._collect()
            if not (len(tables) == len(self._tables)
                    and all(map(operator.is_, tables, self._tables))
                    and len(norms) == len(self._norms)
                    and all(map(operator.is_, norms, self._norms))):
                return True
            self._registrations = _Registrations.count
        if not self._full:
            return loads_generation() != self._loads
        # Same sizes, then the same objects in order (one pass, no list built).
        if list(map(len, self._tables)) != self._sizes or not all(map(
                operator.is_, itertools.chain.from_iterable(map(dict.values, self._tables)),
                self._entries)):
            return True
        return self._watch.changed() or tuple(map(_EPS, self._norms)) != self._eps


def registrations() -> int:
    """Counts every parameter, buffer and submodule registration anywhere in the process (see
    ``_Registrations``): unchanged, no model's structure changed."""
    _Registrations.install()
    return _Registrations.count
