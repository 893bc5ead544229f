"""Ahead-of-time compilation of the kernels a model will launch, in parallel, through Triton's
own JIT, so the result lands in Triton's cache under the very key the launch looks up.

A job is one traced launch (a ``ConvGeometry``) with one config, for one target
architecture.  Each job is compiled by ``compile_ahead`` in kernels/conv/launcher.py, which calls
the JIT's ``warmup``: the same binder, specialisation, constexprs and options as a real
launch, with mock pointers in place of tensors.  Nothing here re-derives Triton's cache key;
the test suite checks that a warm-up and a real launch produce the same key
(``jit_cache_keys``).

Compiles run in fresh worker processes (one per core), each with a stand-in Triton driver
that names the target: no GPU is needed, none is touched (16 CUDA contexts would cost memory
and seconds), and the same code serves ``fusedres warmup`` on a GPU machine and
``fusedres inspect`` on a CPU-only one.
"""
import collections
import contextlib
import dataclasses
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple, Optional

import triton

from .kernels import ConvConfig, ConvGeometry, autotune
from .kernels.conv import configs, launcher

# Tensor-core matrix instructions in PTX, best first: Hopper's warpgroup MMA, then the
# Ampere-style warp MMA (also valid, but slower, on sm_90).
TENSOR_CORE_OPS = ("wgmma", "mma.sync")


class Job(NamedTuple):
    """One compile: a traced launch, a config, a target (80 = sm_80, 90 = sm_90) and the TF32
    setting the launch would read."""
    geometry: ConvGeometry
    config: ConvConfig
    arch: int
    allow_tf32: bool


@dataclasses.dataclass
class CompileResult:
    """What one compile produced.  ``error`` is set (and the counts are None) when it failed.

    The K-loop fields come from the SASS (``read_k_loop``): instructions per K step, the
    matrix instructions in it, whether every wgmma group is waited for before the next
    (serialised), and whether tiles arrive by TMA."""
    registers: Optional[int] = None
    stack_bytes: Optional[int] = None
    shared_bytes: Optional[int] = None
    tensor_core: Optional[str] = None  # one of TENSOR_CORE_OPS, or None
    seconds: float = 0.0
    error: Optional[str] = None
    cached: bool = False
    loop_instructions: Optional[float] = None
    mma_per_step: Optional[float] = None
    serialised_mma: Optional[bool] = None
    tma: Optional[bool] = None


def candidate_configs(geometry: ConvGeometry, autotuning: Optional[bool] = None,
                      arch: Optional[int] = None, sms: Optional[int] = None):
    """The configs a launch of ``geometry`` may use on ``arch`` (80, 90; None: the candidates
    of every architecture but the sm_90-only ones) with ``sms`` SMs (default: the arch's usual
    card): the tuner's candidates, or only the heuristic default when autotuning is off."""
    element_size = geometry.dtype.itemsize
    if autotuning is None:
        autotuning = autotune.enabled()
    ints, consts = geometry.scalars(allow_tf32=False, interpreted=False)
    if autotuning:
        return configs.candidates(consts, element_size, ints["M"], arch, sms)
    return [configs.default_config(ints["M"], consts, element_size)]


# ---------------------------------------------------------------- the JIT, on a named target

class TargetDriver:
    """Stands in for Triton's CUDA driver where the JIT asks which device and target it
    compiles for; it can launch nothing, which a warm-up never does."""

    def __init__(self, arch):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def target_driver(arch, stand_in=None):
    """Inside the block, the kernel's JIT compiles for ``arch`` whatever device (if any)
    exists (``stand_in``: the ``TargetDriver`` to use, default a new one).  The JIT builds
    its per-device state (binder, backend, in-memory kernels) once per
    device from the driver's target and keys nothing on the target afterwards, so the block
    gets fresh state, and the state from before comes back after it."""
    driver, jits = triton.runtime.driver, launcher.JIT_FUNCTIONS
    previous, previous_caches = driver._active, [jit.device_caches for jit in jits]
    driver.set_active(stand_in or TargetDriver(arch))
    for jit in jits:
        jit.device_caches = collections.defaultdict(jit.create_binder)
    try:
        yield
    finally:
        driver._active = previous
        for jit, caches in zip(jits, previous_caches):
            jit.device_caches = caches


@contextlib.contextmanager
def jit_cache_keys():
    """Collect, for every kernel the JIT would compile inside the block, its cache key
    prefixed by the target it would compile for (``sm90|...``: the key alone does not name
    the target), and skip the compile (Triton's ``jit_cache_hook``, called with the key the
    JIT computed, just before compiling)."""
    knobs = triton.knobs.runtime
    keys, previous = [], knobs.jit_cache_hook

    def record(*, key, compile, **_):
        arch = json.loads(compile["specialization_data"])["options"]["arch"]
        keys.append(f"{arch}|{key}")
        return True  # skip the compile

    knobs.jit_cache_hook = record
    try:
        yield keys
    finally:
        knobs.jit_cache_hook = previous


def compile_here(job: Job):
    """Compile ``job`` in this process, through the JIT; returns Triton's compiled kernel
    (None where a ``jit_cache_hook`` skipped it).  Needs a process whose Triton is not the
    interpreter."""
    with target_driver(job.arch):
        return launcher.compile_ahead(job.geometry, job.config, job.allow_tf32)


# ---------------------------------------------------------------- parallel compiling

def compile_in_workers(jobs, workers=None, progress=None):
    """CompileResults for ``jobs`` (in order), each compiled in a fresh Python process
    (``workers`` at a time, default one per core); ``progress(done, total)`` is called as
    chunks finish.  Fresh processes, always: one that imported Triton with TRITON_INTERPRET=1
    (the CPU test suite) holds interpreter versions of triton.language's own helpers, which
    the GPU compiler cannot lower.  Plain subprocesses rather than multiprocessing, which
    would re-run the caller's main script in every worker."""
    jobs = list(jobs)
    if not jobs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    # About two chunks per worker, handed out as workers free up: compile times differ
    # between geometries, so a worker stuck with all the slow ones would set the wall time,
    # while every chunk pays a process start (importing torch: about 2 s).
    chunk_size = -(-len(jobs) // (workers * 2))
    chunks = [list(range(i, min(i + chunk_size, len(jobs))))
              for i in range(0, len(jobs), chunk_size)]
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
    results = [None] * len(jobs)
    done = 0
    with tempfile.TemporaryDirectory() as folder, _terminate_raises():
        running = {}
        pending = list(enumerate(chunks))
        try:
            while pending or running:
                while pending and len(running) < workers:
                    number, chunk = pending.pop(0)
                    output = os.path.join(folder, f"{number}.pickle")
                    with open(output + ".err", "wb") as errors:
                        proc = subprocess.Popen([sys.executable, "-c", _WORKER, output],
                                                stdin=subprocess.PIPE, stderr=errors, env=env)
                    running[proc] = (chunk, output)  # before the write: Ctrl-C kills it too
                    proc.stdin.write(pickle.dumps([jobs[i] for i in chunk]))
                    proc.stdin.close()
                finished = _wait_any(running)
                chunk, output = running.pop(finished)
                if finished.returncode != 0:
                    with open(output + ".err", errors="replace") as errors:
                        tail = errors.read()[-2000:].strip()
                    raise RuntimeError(f"compile worker exited with status "
                                       f"{finished.returncode}:\n{tail}")
                with open(output, "rb") as file:
                    for i, result in zip(chunk, pickle.load(file)):
                        results[i] = result
                done += len(chunk)
                if progress is not None:
                    progress(done, len(jobs))
        finally:  # on an error, Ctrl-C or SIGTERM, no worker outlives the run
            for proc in running:
                if proc.poll() is None:
                    proc.kill()
    return results


@contextlib.contextmanager
def _terminate_raises():
    """Turn SIGTERM into SystemExit while workers run, so the cleanup above runs (Python's
    default SIGTERM action ends the process at once and would leave the workers compiling).
    Only the main thread can set signal handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_any(running):
    while True:
        for proc in running:
            if proc.poll() is not None:
                return proc
        time.sleep(0.02)


def _package_root():
    """The folder that holds the ``fusedres`` package (a checkout's root, or site-packages),
    so workers import the same code from any working directory."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Run by each worker: pickled jobs on stdin, pickled results to the file named in argv.
_WORKER = """
import pickle, sys
from fusedres.aot import compile_and_measure
results = [compile_and_measure(job) for job in pickle.load(sys.stdin.buffer)]
with open(sys.argv[1], "wb") as file:
    pickle.dump(results, file)
"""


def compile_and_measure(job: Job) -> CompileResult:
    """Compile ``job`` here and read what ptxas made of it."""
    start = time.perf_counter()
    try:
        compiled = compile_here(job)
        cubin = compiled.asm["cubin"]
        registers, stack = resource_usage(cubin)
        loop = read_k_loop(_cuobjdump_text("--dump-sass", cubin))
    except Exception as error:  # a compile failure is a finding to report, not a crash
        return CompileResult(seconds=time.perf_counter() - start, error=_error_summary(error))
    return CompileResult(registers=registers, stack_bytes=stack,
                         shared_bytes=compiled.metadata.shared,
                         tensor_core=_tensor_core_op(compiled.asm["ptx"]),
                         seconds=time.perf_counter() - start, **loop._asdict())


class KLoop(NamedTuple):
    loop_instructions: Optional[float]
    mma_per_step: Optional[float]
    serialised_mma: Optional[bool]
    tma: bool


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_MMA = ("HGMMA", "HMMA")
# Wait until no wgmma group is in flight.
_WAIT_ALL = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x0\b")


def read_k_loop(sass: str) -> KLoop:
    """The main K loop of one kernel's SASS: the first loop closed (a branch back to a lower
    address) that holds a matrix instruction (the main loop comes before the fused
    shortcut's; an inner loop closes before its outer one), its instructions and matrix
    instructions per iteration.  A loop that ptxas unrolled completely (constant trip counts) has no branch
    back; then the span from the first to the last matrix instruction covers one step fewer
    than there are wgmma groups (``gsb0`` closes one) or, on the Ampere path, HMMA runs.
    ``serialised_mma``: a ``WARPGROUP.DEPBAR.LE gsb0, 0x0`` (wait until no wgmma group is in
    flight) in the loop, so consecutive groups cannot overlap; in a completely unrolled span,
    such a wait after more than half of the groups (one wait where the main K walk hands over
    to the fused shortcut's, a pipeline drained once per tile, is not serialisation, except
    in a span of just two groups, where it is all there is)."""
    code = [(int(addr, 16), text) for addr, text in _SASS_LINE.findall(sass)]
    at = {addr: i for i, (addr, _) in enumerate(code)}
    best = None
    for i, (addr, text) in enumerate(code):
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < addr and int(target.group(1), 16) in at:
            body = [t for _, t in code[at[int(target.group(1), 16)]:i + 1]]
            mma = sum(1 for t in body if t.startswith(_MMA))
            if mma:
                best = (body, mma, 1)
                break
    if best is None:
        positions = [i for i, (_, t) in enumerate(code) if t.startswith(_MMA)]
        if not positions:
            return KLoop(None, None, None, "UTMALDG" in sass)
        body = [t for _, t in code[positions[0]:positions[-1] + 1]]
        steps = (sum(1 for t in body if t.startswith("HGMMA") and "gsb0" in t)
                 or sum(1 for a, b in zip(positions, positions[1:]) if b - a > 8) + 1)
        waits = sum(1 for t in body if _WAIT_ALL.search(t))
        serialised = waits > (steps - 1) / 2
        per_step = (len(body) - 1) / (steps - 1) if steps > 1 else len(body)
        return KLoop(per_step, len(positions) / steps, serialised, "UTMALDG" in sass)
    body, mma, steps = best
    serialised = any(_WAIT_ALL.search(t) for t in body)
    return KLoop(len(body) / steps, mma / steps, serialised, "UTMALDG" in sass)


def _error_summary(error):
    """The error's type and one line of its message: the last that says "error" (ptxas ends
    with a repro command), else the last (where Triton puts the cause)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if "error" in line.lower()]
    return f"{type(error).__name__}: {(said or lines or [''])[-1]}"


def _tensor_core_op(ptx):
    return next((op for op in TENSOR_CORE_OPS if re.search(rf"\b{re.escape(op)}\b", ptx)), None)


def _cuobjdump_text(option, cubin):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([_cuobjdump(), option, file.name],
                              check=True, capture_output=True, text=True).stdout


def resource_usage(cubin):
    """(registers, stack bytes) of the cubin's kernel, from ``cuobjdump --dump-resource-usage``.
    Stack bytes are local memory the kernel needs per thread: register spills."""
    out = _cuobjdump_text("--dump-resource-usage", cubin)
    usage = re.search(r"REG:(\d+)\s+STACK:(\d+)", out)
    if usage is None:
        raise RuntimeError(f"no resource usage in cuobjdump output:\n{out}")
    return int(usage.group(1)), int(usage.group(2))


def _cuobjdump():
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                           "cuobjdump")
    path = bundled if os.path.isfile(bundled) else shutil.which("cuobjdump")
    if path is None:
        raise FileNotFoundError("cuobjdump: not bundled with this Triton and not on PATH")
    return path
