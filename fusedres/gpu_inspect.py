"""``fusedres inspect``: compile every kernel specialisation a fused model would launch for a
GPU target, without a GPU, and report what ptxas made of it.

A specialisation is one traced geometry (its constexprs and the integer arguments' Triton
specialisation) times one autotune config that could be chosen for it.  Each is compiled with
``triton.compile`` for sm_80 or sm_90; the cubin's registers and stack (spill) bytes come from
the cuobjdump bundled with Triton, the shared memory from the compiled kernel's metadata, and
the tensor-core instruction from the PTX.  See docs/inspect.md for how to read the table.
"""
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Optional, Tuple

import torch
import triton

from . import trace
from .models import MODELS

# The kernel module itself: the package re-exports its launcher under the same name.
conv_kernel = importlib.import_module("fusedres.kernels.conv_bn_act")

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
ARCHES = {"sm_80": 80, "sm_90": 90}
# Largest dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_LIMIT = {80: 166912, 90: 232448}
# Tensor-core matrix instructions in PTX, best first: Hopper's warpgroup MMA, then the
# Ampere-style warp MMA (also valid, but slower, on sm_90).
TENSOR_CORE_OPS = ("wgmma", "mma.sync")
_TRITON_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
# Pointer parameters that do not carry the activation dtype (the folded bias is fp32).
_FP32_POINTERS = ("bias_ptr",)


class TileConfig(NamedTuple):
    """One autotune config, in a picklable, printable form."""
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    @classmethod
    def from_triton(cls, config: triton.Config) -> "TileConfig":
        kw = config.kwargs
        return cls(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages)

    def describe(self) -> str:
        return (f"{self.block_m}x{self.block_n}x{self.block_k} "
                f"w{self.num_warps} s{self.num_stages}")


class CompileJob(NamedTuple):
    """Everything ``triton.compile`` sees: two equal jobs build the same cubin."""
    signature: Tuple[Tuple[str, str], ...]
    constexprs: Tuple[Tuple[str, object], ...]
    divisible_by_16: Tuple[str, ...]
    num_warps: int
    num_stages: int
    arch: int


@dataclasses.dataclass
class CompileResult:
    """What one compile produced.  ``error`` is set (and the counts are None) when it failed."""
    registers: Optional[int] = None
    stack_bytes: Optional[int] = None
    shared_bytes: Optional[int] = None
    tensor_core: Optional[str] = None  # one of TENSOR_CORE_OPS, or None
    seconds: float = 0.0
    error: Optional[str] = None
    cached: bool = False


class Row(NamedTuple):
    """One line of the report: a traced launch, a config and what compiling it gave."""
    spec: trace.LaunchSpec
    config: TileConfig
    arch: int
    result: CompileResult


# ---------------------------------------------------------------- what would launch

def specialisations(model_name, dtype, batch=256, size=(224, 224)):
    """The distinct LaunchSpecs of one forward of ``MODELS[model_name]`` (traced on meta)."""
    with torch.device("meta"):
        model = MODELS[model_name]()
    return trace.unique(trace.trace_launches(model, batch, size, dtype))


def candidate_configs(spec):
    """The autotune configs the launcher could pick for ``spec`` (after its pruning)."""
    configs = conv_kernel.configs_for(torch.empty((), dtype=spec.dtype).element_size())
    return [TileConfig.from_triton(c) for c in configs]


def uses_tensor_cores(spec, allow_tf32):
    """Whether the kernel's tl.dot should run on tensor cores: fp16/bf16 always, fp32 only
    as TF32 (IEEE fp32 has no tensor-core path)."""
    return spec.dtype != torch.float32 or allow_tf32


def _int_specialisation(value):
    """How Triton's JIT specialises an int argument: 1 becomes a constant, multiples of 16
    are marked divisible (which enables vectorised address arithmetic)."""
    if value == 1:
        return "constexpr", False
    return ("i64" if abs(value) >= 2 ** 31 else "i32"), value % 16 == 0


def compile_job(spec, config, arch, allow_tf32):
    """The CompileJob that launching ``spec`` with ``config`` on ``arch`` would compile.
    Pointers are assumed 16-byte aligned, as PyTorch allocations are."""
    ints, constexprs = conv_kernel.launch_scalars(**spec._asdict(), allow_tf32=allow_tf32,
                                                  interpreted=False)
    constexprs.update(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k)
    signature, divisible = [], []
    for name in _kernel_arg_names():
        if name in constexprs:
            signature.append((name, "constexpr"))
        elif name in ints:
            kind, aligned = _int_specialisation(ints[name])
            if kind == "constexpr":
                constexprs[name] = ints[name]
            signature.append((name, kind))
            if aligned:
                divisible.append(name)
        else:
            dtype = torch.float32 if name in _FP32_POINTERS else spec.dtype
            signature.append((name, "*" + _TRITON_TYPE[dtype]))
            divisible.append(name)
    return CompileJob(tuple(signature), tuple(sorted(constexprs.items())), tuple(divisible),
                      config.num_warps, config.num_stages, arch)


def _kernel_arg_names():
    return list(inspect.signature(_kernel_function()).parameters)


def _kernel_function():
    """The kernel's plain Python function (the JIT wrapper differs under the interpreter)."""
    kernel = conv_kernel._conv_bn_act_kernel
    return getattr(kernel, "fn", kernel)


# ---------------------------------------------------------------- compiling

def compile_one(spec, config, arch, allow_tf32=None):
    """Compile one specialisation for ``arch`` (80 or 90) and return its CompileResult."""
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cudnn.allow_tf32
    return compile_jobs([compile_job(spec, config, arch, allow_tf32)])[0]


def compile_jobs(jobs, workers=None):
    """CompileResults for ``jobs`` (in order), from the result cache where possible; the rest
    are compiled in parallel in fresh processes."""
    results = [_cache_load(job) for job in jobs]
    todo = list(dict.fromkeys(job for job, result in zip(jobs, results) if result is None))
    if todo:
        built = dict(zip(todo, _compile_in_workers(todo, workers)))
        for job in todo:
            if built[job].error is None:
                _cache_store(job, built[job])
        results = [result or built[job] for job, result in zip(jobs, results)]
    return results


def _compile_in_workers(jobs, workers):
    """Compile ``jobs`` in fresh Python processes, dealt out round-robin.  Fresh processes,
    always: one that imported Triton with TRITON_INTERPRET=1 (the CPU test suite) holds
    interpreter versions of triton.language's own jit helpers, which the GPU compiler cannot
    lower.  Plain subprocesses rather than multiprocessing, which would re-run the caller's
    main script in every worker."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    chunks = [jobs[i::workers] for i in range(workers)]
    with tempfile.TemporaryDirectory() as folder:
        outputs = [os.path.join(folder, f"{i}.pickle") for i in range(workers)]
        procs = [subprocess.Popen([sys.executable, "-c", _WORKER, output],
                                  stdin=subprocess.PIPE, env=env) for output in outputs]
        try:
            for proc, chunk in zip(procs, chunks):
                proc.stdin.write(pickle.dumps(chunk))
                proc.stdin.close()
            for proc in procs:
                if proc.wait() != 0:
                    raise RuntimeError(f"compile worker exited with status {proc.returncode}")
        finally:  # on an error or Ctrl-C, no worker outlives the run
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        done = {}
        for chunk, output in zip(chunks, outputs):
            with open(output, "rb") as file:
                done.update(zip(chunk, pickle.load(file)))
    return [done[job] for job in jobs]


# Run by each worker: pickled jobs on stdin, pickled results to the file named in argv.
_WORKER = """
import pickle, sys
from fusedres.gpu_inspect import _compile_here
results = [_compile_here(job) for job in pickle.load(sys.stdin.buffer)]
with open(sys.argv[1], "wb") as file:
    pickle.dump(results, file)
"""


def _compile_here(job):
    """Compile ``job`` in this process (one whose Triton is not the interpreter)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(job.constexprs)
    fn = triton.runtime.jit.JITFunction(_kernel_function())
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]]
             for name in job.divisible_by_16}
    source = ASTSource(fn=fn, signature=dict(job.signature), constexprs=constexprs, attrs=attrs)
    start = time.perf_counter()
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", job.arch, 32),
                                  options={"num_warps": job.num_warps,
                                           "num_stages": job.num_stages})
        registers, stack = _resource_usage(compiled.asm["cubin"])
    except Exception as error:  # a compile failure is a finding to report, not a crash
        return CompileResult(seconds=time.perf_counter() - start, error=_error_summary(error))
    return CompileResult(registers=registers, stack_bytes=stack,
                         shared_bytes=compiled.metadata.shared,
                         tensor_core=_tensor_core_op(compiled.asm["ptx"]),
                         seconds=time.perf_counter() - start)


def _error_summary(error):
    """The error's type and one line of its message: the last that says "error" (ptxas ends
    with a repro command), else the last (where Triton puts the cause)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if "error" in line.lower()]
    return f"{type(error).__name__}: {(said or lines or [''])[-1]}"


def _tensor_core_op(ptx):
    return next((op for op in TENSOR_CORE_OPS if re.search(rf"\b{re.escape(op)}\b", ptx)), None)


def _resource_usage(cubin):
    """(registers, stack bytes) of the cubin's kernel, from ``cuobjdump --dump-resource-usage``.
    Stack bytes are local memory the kernel needs per thread: register spills."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", file.name],
                             check=True, capture_output=True, text=True).stdout
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


# ---------------------------------------------------------------- result cache

def _cache_path(job):
    """Where the result of ``job`` is kept, next to Triton's own cache (so TRITON_CACHE_DIR
    moves, and clearing it clears, both).  The key covers everything that decides the cubin
    and its reading: Triton's version, the kernel module's source, the job itself."""
    root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"),
                                                              ".triton", "cache")
    key = hashlib.sha256(repr((triton.__version__, _kernel_source_hash(), job)).encode())
    return os.path.join(root, "fusedres-inspect", key.hexdigest() + ".json")


def _kernel_source_hash():
    with open(conv_kernel.__file__, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def _cache_load(job):
    try:
        with open(_cache_path(job)) as file:
            return dataclasses.replace(CompileResult(**json.load(file)), cached=True)
    except (OSError, ValueError, TypeError):
        return None


def _cache_store(job, result):
    path = _cache_path(job)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w") as file:
        json.dump(dataclasses.asdict(result), file)
    os.replace(temp, path)  # atomic: concurrent runs never read half a file


# ---------------------------------------------------------------- judging and reporting

def check(result, arch, needs_tensor_core=True):
    """The problems with one CompileResult on ``arch``; empty when it is clean."""
    if result.error is not None:
        return [f"compile failed: {result.error}"]
    problems = []
    if result.stack_bytes:
        problems.append(f"spills: {result.stack_bytes} bytes of stack per thread")
    if result.shared_bytes > SHARED_LIMIT[arch]:
        problems.append(f"shared memory {result.shared_bytes} B exceeds sm_{arch}'s "
                        f"{SHARED_LIMIT[arch]} B")
    if needs_tensor_core and result.tensor_core is None:
        problems.append("no tensor-core instruction (neither wgmma nor mma.sync in the PTX)")
    return problems


def inspect_model(model_name, dtype, arch, batch=256, size=(224, 224), allow_tf32=None,
                  workers=None):
    """One Row per (specialisation, candidate config) of the model on ``arch``."""
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cudnn.allow_tf32
    pairs = [(spec, config) for spec in specialisations(model_name, dtype, batch, size)
             for config in candidate_configs(spec)]
    jobs = [compile_job(spec, config, arch, allow_tf32) for spec, config in pairs]
    results = compile_jobs(jobs, workers)
    return [Row(spec, config, arch, result) for (spec, config), result in zip(pairs, results)]


def row_problems(row, allow_tf32):
    return check(row.result, row.arch, uses_tensor_cores(row.spec, allow_tf32))


def format_table(rows, allow_tf32):
    header = ("geometry", "config", "regs", "stack", "shared", "tensor core", "compile", "status")
    lines = [header]
    for row in rows:
        r = row.result
        problems = row_problems(row, allow_tf32)
        lines.append((
            row.spec.describe(), row.config.describe(),
            _or_dash(r.registers), _or_dash(r.stack_bytes), _or_dash(r.shared_bytes),
            r.tensor_core or "none",
            "cached" if r.cached else f"{r.seconds:.1f}s",
            "ok" if not problems else "FAIL: " + "; ".join(problems),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths))
                     + "  " + line[-1] for line in lines)


def _or_dash(value):
    return "-" if value is None else str(value)


# ---------------------------------------------------------------- command line

def _size(text):
    height, _, width = text.lower().partition("x")
    return int(height), int(width or height)


def add_arguments(parser):
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--dtype", required=True, choices=list(DTYPES))
    parser.add_argument("--arch", required=True, choices=list(ARCHES))
    parser.add_argument("--batch", type=int, default=256,
                        help="batch size traced (default 256); it decides which integer "
                             "arguments Triton specialises as divisible by 16")
    parser.add_argument("--size", type=_size, default=(224, 224), metavar="HxW",
                        help="input image size (default 224x224)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel compiles (default: one per CPU core)")


def run(args) -> int:
    allow_tf32 = torch.backends.cudnn.allow_tf32
    arch = ARCHES[args.arch]
    rows = inspect_model(args.model, DTYPES[args.dtype], arch, args.batch, args.size,
                         allow_tf32, args.jobs)
    print(format_table(rows, allow_tf32))
    failed = [row for row in rows if row_problems(row, allow_tf32)]
    geometries = len({row.spec for row in rows})
    print(f"\n{args.model} {args.dtype} {args.arch}: {len(rows)} specialisations x configs "
          f"({geometries} geometries), {len(failed)} failed")
    for row in failed:
        for problem in row_problems(row, allow_tf32):
            print(f"FAIL {row.spec.describe()} [{row.config.describe()}]: {problem}")
    return 1 if failed else 0
