"""Autotuning that a process pays once per machine, not once per process.

Triton's own ``triton.autotune`` keeps its choices in memory, so every new process (a second
pytest stage, a restarted server) benchmarks every config of every geometry again.  This
tuner keeps the winner of each key in a small JSON file in Triton's cache folder, keyed on
everything that could change the answer: the device's name, the Triton and torch versions,
the kernel's source and the candidate configs.  A key is benchmarked once; afterwards any
process reads its winner.

``FUSEDRES_AUTOTUNE=0`` turns tuning off: the launcher then uses its heuristic default
config per geometry (the GPU correctness tests run that way, so they test numerics, not
the tuner).
"""
import hashlib
import json
import os
import threading

import torch
import triton
from triton.compiler.errors import CompileTimeAssertionFailure
from triton.runtime.errors import OutOfResources, PTXASError

# A candidate that cannot run on this GPU (too much shared memory, too many registers, a
# compile-time assertion) is timed as infinitely slow, as Triton's own autotuner does.
_UNRUNNABLE = (OutOfResources, PTXASError, CompileTimeAssertionFailure)


def enabled() -> bool:
    """Whether launchers autotune (``FUSEDRES_AUTOTUNE``, default on; 0/false/off/no = off)."""
    return os.environ.get("FUSEDRES_AUTOTUNE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_folder() -> str:
    """``fusedres-autotune`` inside Triton's cache folder (TRITON_CACHE_DIR moves both)."""
    root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton",
                                                              "cache")
    return os.path.join(root, "fusedres-autotune")


def benchmark(run) -> float:
    """Median GPU milliseconds of ``run()`` on the current GPU: the call captured in a CUDA
    graph and replayed (``do_bench_cudagraph``), so host work, which differs between
    candidates and which launch plans later remove, cannot rank them.  Where the call cannot
    be captured, timed between events instead (``do_bench``, after an L2 flush; host time can
    leak into that).  Short: candidates that differ by less than the noise of a 20 ms
    measurement are equally good choices."""
    try:
        return triton.testing.do_bench_cudagraph(run, rep=20, return_mode="median")
    except RuntimeError:  # a call the CUDA graph capture refuses
        return triton.testing.do_bench(run, warmup=5, rep=20, return_mode="median")


class Tuner:
    """Picks and remembers the fastest config per key for one kernel.

    Configs are anything with a ``describe()`` naming them uniquely (what is stored).
    ``source_files`` are the kernel's sources: any edit to them invalidates every stored
    choice.
    """

    def __init__(self, name: str, source_files):
        self.name = name
        digest = hashlib.sha256()
        for path in source_files:
            with open(path, "rb") as file:
                digest.update(file.read())
        self._source_hash = digest.hexdigest()
        self._chosen = {}  # (device, key) -> config; read without the lock (atomic dict reads)
        self._lock = threading.Lock()

    def pick(self, key, configs, run, device):
        """The fastest of ``configs`` for ``key``: from memory, else from disk, else measured
        by calling ``run(config)`` for each (through ``benchmark``) and stored."""
        # The device itself, not its name: this runs on every launch, and the name (a driver
        # query) is needed only for the stored file.
        memory_key = (str(device), key)
        config = self._chosen.get(memory_key)
        if config is not None:
            return config
        with self._lock:
            config = self._chosen.get(memory_key)
            if config is None:
                path = self._path(key, configs, device)
                config = self._load(path, configs)
                if config is None:
                    timings = [_time_or_inf(run, c) for c in configs]
                    best = min(range(len(configs)), key=timings.__getitem__)
                    if timings[best] == float("inf"):
                        run(configs[best])  # none can run here: raise the real error
                    config = configs[best]
                    self._store(path, key, config, configs, timings)
                self._chosen[memory_key] = config
        return config

    def chosen(self) -> dict:
        """``{key: config}`` of every key picked in this process (any device)."""
        return {key: config for (_, key), config in self._chosen.items()}

    def forget(self) -> None:
        """Drop the in-memory choices (the stored ones stay)."""
        with self._lock:
            self._chosen.clear()

    def _path(self, key, configs, device) -> str:
        identity = repr((self.name, self._source_hash, _device_name(device), triton.__version__,
                         torch.__version__, key, [c.describe() for c in configs]))
        digest = hashlib.sha256(identity.encode()).hexdigest()
        return os.path.join(cache_folder(), f"{self.name}-{digest}.json")

    @staticmethod
    def _load(path, configs):
        try:
            with open(path) as file:
                winner = json.load(file)["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return next((c for c in configs if c.describe() == winner), None)

    @staticmethod
    def _store(path, key, config, configs, timings):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        record = {"key": repr(key), "config": config.describe(),
                  "timings_ms": {c.describe(): t for c, t in zip(configs, timings)}}
        temp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(temp, "w") as file:
            json.dump(record, file)
        os.replace(temp, path)  # atomic: a concurrent reader sees the old file or the new one


def _time_or_inf(run, config) -> float:
    try:
        return benchmark(lambda: run(config))
    except _UNRUNNABLE:
        return float("inf")


def _device_name(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
