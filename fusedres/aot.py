"""Ahead-of-time compilation of the kernels a model will launch, in parallel, through Triton's
own JIT, so the result lands in Triton's cache under the very key the launch looks up.

A job is one traced launch (a ``ConvGeometry``) with one config, for one target
architecture.  Each job is compiled by ``compile_ahead`` in kernels/conv/launcher.py, which calls
the JIT's ``warmup``: the same binder, specialisation, constexprs and options as a real
launch, with mock pointers in place of tensors.  A ``GemmJob`` compiles the reference GEMM
(kernels/gemm/) the same way, with a config's tile on a 1x1 layer's shape, for ``fusedres
inspect`` to read beside that layer's rows.  Nothing here re-derives Triton's cache key;
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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple, Optional

import torch
import triton

from . import sass
from .kernels import ConvConfig, ConvGeometry, autotune
from .kernels.conv import configs, launcher
from .kernels.gemm import launcher as gemm_launcher
from .kernels.gemm.kernel import persistent_matmul_kernel

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


class GemmJob(NamedTuple):
    """One compile of the reference GEMM (``persistent_matmul_kernel``, kernels/gemm/) with a
    convolution config's tile (BLOCK_M/N/K, warps, stages) on a 1x1 layer's GEMM: ``m`` rows
    (a runtime argument, passed so that Triton specialises it as the convolution's M),
    ``n`` = C_out and ``k`` = C_in (constexprs, as the convolution's channels are), in
    ``dtype`` (fp16 or bf16) for ``arch``; ``flatten``: its tile and K loops as one."""
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    m: int
    n: int
    k: int
    dtype: torch.dtype
    arch: int
    flatten: bool = False


@dataclasses.dataclass
class CompileResult:
    """What one compile produced.  ``error`` is set (and the counts are None) when it failed.

    The K-loop fields come from the SASS (``sass.read_k_loop``): instructions per K step, the
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
    driver, jits = triton.runtime.driver, (*launcher.JIT_FUNCTIONS, persistent_matmul_kernel)
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


def compile_here(job):
    """Compile ``job`` (a Job or a GemmJob) in this process, through the JIT; returns Triton's
    compiled kernel (None where a ``jit_cache_hook`` skipped it).  Needs a process whose
    Triton is not the interpreter."""
    with target_driver(job.arch):
        if isinstance(job, GemmJob):
            # The launch's arguments (kernels/gemm/launcher.py): mock pointers, the tile's
            # group size, one program per SM of the arch's usual card.
            return persistent_matmul_kernel.warmup(
                job.dtype, job.dtype, job.dtype, job.m, N=job.n, K=job.k,
                BLOCK_M=job.block_m, BLOCK_N=job.block_n, BLOCK_K=job.block_k,
                GROUP_M=gemm_launcher.TILE["GROUP_M"], PROGRAMS=configs.TYPICAL_SMS[job.arch],
                FLATTEN=job.flatten, UPCAST_DOT=False, num_warps=job.num_warps,
                num_stages=job.num_stages,
                grid=(1,))
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


def compile_and_measure(job) -> CompileResult:
    """Compile ``job`` here and read what ptxas made of it."""
    start = time.perf_counter()
    try:
        compiled = compile_here(job)
        cubin = compiled.asm["cubin"]
        registers, stack = sass.resource_usage(cubin)
        loop = sass.read_k_loop(sass.dump("--dump-sass", cubin))
    except Exception as error:  # a compile failure is a finding to report, not a crash
        return CompileResult(seconds=time.perf_counter() - start, error=_error_summary(error))
    return CompileResult(registers=registers, stack_bytes=stack,
                         shared_bytes=compiled.metadata.shared,
                         tensor_core=_tensor_core_op(compiled.asm["ptx"]),
                         seconds=time.perf_counter() - start, **loop._asdict())


def _error_summary(error):
    """The error's type and one line of its message: the last that says "error" (ptxas ends
    with a repro command), else the last (where Triton puts the cause)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if "error" in line.lower()]
    return f"{type(error).__name__}: {(said or lines or [''])[-1]}"


def _tensor_core_op(ptx):
    return next((op for op in TENSOR_CORE_OPS if re.search(rf"\b{re.escape(op)}\b", ptx)), None)
