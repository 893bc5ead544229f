"""``fusedres inspect``: compile every kernel specialisation a fused model would launch for a
GPU target, without a GPU, and report what ptxas made of it.

A specialisation is one traced geometry (its constexprs and the integer arguments' Triton
specialisation) times one autotune config that could be chosen for it.  Each is compiled for
sm_80 or sm_90 through Triton's JIT (``fusedres.aot``), so the same run fills Triton's cache
for the launches to come; the cubin's registers and stack (spill) bytes come from
the cuobjdump bundled with Triton, the shared memory from the compiled kernel's metadata, and
the tensor-core instruction from the PTX.  See docs/inspect.md for how to read the table.
"""
import dataclasses
import hashlib
import json
import os
import sys
from typing import NamedTuple, Optional

import torch
import triton

from . import aot, sass, trace
from .aot import TENSOR_CORE_OPS, CompileResult, GemmJob, Job
from .cli import positive_int
from .kernels import cudnn_allows_tf32
from .kernels import ConvConfig, ConvGeometry
from .kernels.conv import backends, configs, launcher
from .kernels.gemm import kernel as gemm_kernel
from . import model_names

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
ARCHES = {"sm_80": 80, "sm_90": 90}
# Largest dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_LIMIT = {80: 166912, 90: 232448}
# Triton releases this module is tested with; others may build their compile calls differently.
TESTED_TRITON = ((3, 6), (3, 8))

__all__ = ["TENSOR_CORE_OPS", "CompileResult", "GemmJob", "Job"]


class Row(NamedTuple):
    """One line of the report: a traced launch, a config and what compiling it gave;
    ``reference``: what compiling the reference GEMM with the same tile on the layer's shape
    gave (``reference_job``; None where there is none, or it was not asked for)."""
    geometry: ConvGeometry
    config: ConvConfig
    arch: int
    result: CompileResult
    reference: Optional[CompileResult] = None


# ---------------------------------------------------------------- what would launch

def specialisations(model_name, dtype, batch=256, size=(224, 224)):
    """The distinct ConvGeometries of one forward of the fused ``model_name`` (a
    ``fusedres.model_names`` name; traced on meta)."""
    with torch.device("meta"):
        model = model_names.create_fused(model_name)
    return trace.unique(trace.trace_launches(model, batch, size, dtype))


def candidate_configs(geometry, arch=None):
    """Every config the tuner could pick for ``geometry`` on ``arch`` (inspect checks them all)."""
    return aot.candidate_configs(geometry, autotuning=True, arch=arch)


def uses_tensor_cores(geometry, allow_tf32):
    """Whether the kernel's tl.dot should run on tensor cores: fp16/bf16 always, fp32 only
    as TF32 (IEEE fp32 has no tensor-core path)."""
    return geometry.dtype != torch.float32 or allow_tf32


# ---------------------------------------------------------------- compiling

def compile_one(geometry, config, arch, allow_tf32=None):
    """Compile one specialisation for ``arch`` (80 or 90) and return its CompileResult."""
    if allow_tf32 is None:
        allow_tf32 = cudnn_allows_tf32()
    return compile_jobs([Job(geometry, config, arch, allow_tf32)])[0]


def reference_job(geometry, config, arch):
    """The GemmJob read beside a 1x1 row: the reference GEMM (kernels/gemm/) with the row's
    tile, warps and stages on the layer's GEMM (M = the convolution's M, N = C_out,
    K = C_in), for the same arch and dtype, flattened where the row's config is.  None for
    other rows: kernel sizes other than 1x1,
    grouped convolutions, the cuDNN backend, and fp32 (the reference GEMM takes fp16 and bf16
    only)."""
    if (config.cudnn or geometry.kernel_size != (1, 1) or geometry.groups != 1
            or geometry.dtype not in (torch.float16, torch.bfloat16)):
        return None
    ints, _ = geometry.scalars(allow_tf32=False, interpreted=False)
    return GemmJob(config.block_m, config.block_n, config.block_k, config.num_warps,
                   config.num_stages, ints["M"], geometry.c_out, geometry.c_in,
                   geometry.dtype, arch, config.flatten)


def compile_jobs(jobs, workers=None, progress=None):
    """CompileResults for ``jobs`` (Jobs and GemmJobs, in order), from the result cache where
    possible; the rest
    are compiled in parallel (``aot.compile_in_workers``), which also fills Triton's cache."""
    results = [_cache_load(job) for job in jobs]
    todo = list(dict.fromkeys(job for job, result in zip(jobs, results) if result is None))
    if todo:
        built = dict(zip(todo, aot.compile_in_workers(todo, workers, progress)))
        for job in todo:
            if built[job].error is None:
                _cache_store(job, built[job])
        results = [result or built[job] for job, result in zip(jobs, results)]
    return results


# ---------------------------------------------------------------- result cache

def _cache_path(job):
    """Where the result of ``job`` is kept, next to Triton's own cache (so TRITON_CACHE_DIR
    moves, and clearing it clears, both).  The key covers everything that decides the cubin
    and its reading: Triton's version, the kernel's and the reader's source, the result's
    fields, the job itself."""
    root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"),
                                                              ".triton", "cache")
    fields = [field.name for field in dataclasses.fields(CompileResult)]
    key = hashlib.sha256(repr((triton.__version__, _source_hash(job), fields, job)).encode())
    return os.path.join(root, "fusedres-inspect", key.hexdigest() + ".json")


def _source_hash(job):
    """The job's kernel sources (the convolution's, or the reference GEMM's for a GemmJob)
    and the code that compiles and reads it (fusedres/aot.py, fusedres/sass.py)."""
    kernels = (gemm_kernel.__file__,) if isinstance(job, GemmJob) else launcher.KERNEL_SOURCES
    digest = hashlib.sha256()
    for path in (*kernels, aot.__file__, sass.__file__):
        with open(path, "rb") as file:
            digest.update(file.read())
    return digest.hexdigest()


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
                  workers=None, progress=None, geometry_text=None, config_text=None,
                  references=False):
    """One Row per (specialisation, candidate config) of the model on ``arch``;
    ``geometry_text`` and ``config_text``, when given, keep only rows whose description
    contains that text.  ``references``: also compile each distinct ``reference_job`` of the
    rows (in the same parallel pass) and set the rows' ``reference``."""
    if allow_tf32 is None:
        allow_tf32 = cudnn_allows_tf32()
    pairs = [(geometry, c) for geometry in specialisations(model_name, dtype, batch, size)
             if geometry_text is None or geometry_text in geometry.describe()
             for c in candidate_configs(geometry, arch)
             if config_text is None or config_text in c.describe()]
    jobs = [Job(geometry, config, arch, allow_tf32) for geometry, config in pairs]
    wanted = [reference_job(geometry, config, arch) if references else None
              for geometry, config in pairs]
    distinct = list(dict.fromkeys(job for job in wanted if job is not None))
    results = compile_jobs(jobs + distinct, workers, progress)
    reference = dict(zip(distinct, results[len(jobs):]))
    rows = [Row(geometry, config, arch, result, reference.get(job))
            for (geometry, config), result, job in zip(pairs, results, wanted)]
    # The tuner's cuDNN candidate beside each geometry's tiles: nothing to compile.
    if backends.cudnn_allowed() and (config_text is None or config_text in configs.CUDNN.describe()):
        rows += [Row(geometry, configs.CUDNN, arch, CompileResult())
                 for geometry in dict.fromkeys(
                     g for g in specialisations(model_name, dtype, batch, size)
                     if geometry_text is None or geometry_text in g.describe())]
    return rows


def row_problems(row, allow_tf32):
    if row.config.cudnn:
        return []  # no Triton code to judge
    return check(row.result, row.arch, uses_tensor_cores(row.geometry, allow_tf32))


def issue_per_kfma(row):
    """Warp-instructions the K loop issues per 1,000 multiply-adds of its tile: num_warps x
    instructions per K step / (BLOCK_M x BLOCK_N x BLOCK_K / 1000).  An H100/H200 SM issues
    4 warp-instructions per clock while its tensor cores do ~2,048 fp16 FMA per clock, so
    above ~2 the tensor cores wait on instruction issue (docs/inspect.md)."""
    loop = row.result.loop_instructions
    if loop is None:
        return None
    c = row.config
    return c.num_warps * loop / (c.block_m * c.block_n * c.block_k / 1000)


def programs(row):
    """The launch's grid size at the traced batch (None for the cuDNN backend); a persistent
    config's is at most the arch's usual card's SM count (``configs.TYPICAL_SMS``)."""
    if row.config.cudnn:
        return None
    ints, consts = row.geometry.scalars(allow_tf32=False, interpreted=False)
    tiles = (configs.output_tiles(ints["M"], consts, row.config) * consts["GROUPS"]
             * row.config.split_k)
    if row.config.persistent:
        return min(tiles, configs.TYPICAL_SMS.get(row.arch, configs.TYPICAL_SMS[90]))
    return tiles


def row_record(row, allow_tf32):
    """One row as the fields of ``--json``."""
    r, ratio = row.result, issue_per_kfma(row)
    return {
        "geometry": row.geometry.describe(), "config": row.config.describe(),
        "walk": configs.walk(row.config, row.geometry.scalars(False, interpreted=False)[1]),
        "variant": row.config.options(),
        "registers": r.registers, "spill_bytes": r.stack_bytes, "shared_bytes": r.shared_bytes,
        "mma": r.tensor_core or "none", "loop_instructions": r.loop_instructions,
        "reference_loop_instructions": (None if row.reference is None
                                        else row.reference.loop_instructions),
        "mma_per_step": r.mma_per_step,
        "issue_per_kfma": None if ratio is None else round(ratio, 3),
        "tma": r.tma, "serialised_mma": r.serialised_mma, "programs": programs(row),
        "arch": f"sm_{row.arch}", "problems": row_problems(row, allow_tf32),
    }


def best_per_geometry(rows, allow_tf32):
    """{geometry: the clean row with the lowest issue ratio, among those whose MMA groups
    overlap (not serialised) where there are any}."""
    def rank(row):
        return bool(row.result.serialised_mma), issue_per_kfma(row)

    best = {}
    for row in rows:
        if issue_per_kfma(row) is None or row_problems(row, allow_tf32):
            continue
        current = best.get(row.geometry)
        if current is None or rank(row) < rank(current):
            best[row.geometry] = row
    return best


def format_table(rows, allow_tf32):
    header = ("geometry", "config", "regs", "stack", "shared", "mma", "loop", "issue/kFMA",
              "serial", "tma", "programs", "compile", "status")
    lines = [header]
    for row in rows:
        r = row.result
        problems = row_problems(row, allow_tf32)
        ratio = issue_per_kfma(row)
        lines.append((
            row.geometry.describe(), row.config.describe(),
            _or_dash(r.registers), _or_dash(r.stack_bytes), _or_dash(r.shared_bytes),
            r.tensor_core or "none",
            "-" if r.loop_instructions is None else f"{r.loop_instructions:.0f}",
            "-" if ratio is None else f"{ratio:.2f}",
            {True: "yes", False: "no"}.get(r.serialised_mma, "-"),
            {True: "yes", False: "no"}.get(r.tma, "-"),
            _or_dash(programs(row)),
            "-" if row.config.cudnn else "cached" if r.cached else f"{r.seconds:.1f}s",
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


def add_model_arguments(parser, several=False):
    """The options that say which launches to compile (shared with ``fusedres warmup``, which
    takes ``several`` models and batch sizes)."""
    parser.add_argument("--model", required=True, type=model_names.argument, metavar="NAME",
                        nargs="+" if several else None,
                        help=model_names.HELP + ("; one or more, their kernels compile in one "
                                                 "parallel pass" if several else ""))
    parser.add_argument("--dtype", required=True, choices=list(DTYPES))
    parser.add_argument("--batch", type=positive_int, default=[256] if several else 256,
                        nargs="+" if several else None,
                        help="batch size traced (default 256); it decides which integer "
                             "arguments Triton specialises as divisible by 16")
    parser.add_argument("--size", type=_size, default=(224, 224), metavar="HxW",
                        help="input image size (default 224x224)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel compiles (default: one per CPU core)")


def add_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument("--arch", required=True, choices=list(ARCHES))
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write every row's fields (registers, spills, K-loop "
                             "instructions, issue ratio, ...) as JSON")
    parser.add_argument("--geometry", metavar="TEXT", default=None,
                        help="only geometries whose description contains TEXT, e.g. "
                             "'7x7/s2' or '512x7x7 -> 512 3x3'")
    parser.add_argument("--config", metavar="TEXT", default=None,
                        help="only configs whose description contains TEXT, e.g. 'SPLIT_K' "
                             "or '64x64x64 w4'")


def check_triton_version(version=None):
    """Raise if this Triton is outside the tested range: the JIT's warm-up and cache-hook
    APIs that ``fusedres.aot`` calls changed shape across releases."""
    major, minor = (int(part) for part in (version or triton.__version__).split(".")[:2])
    low, high = TESTED_TRITON
    if not low <= (major, minor) <= high:
        raise RuntimeError(f"fusedres inspect/warmup is tested with Triton "
                           f"{low[0]}.{low[1]} to {high[0]}.{high[1]}; this is Triton "
                           f"{triton.__version__}")


def stderr_progress(label):
    """A ``progress(done, total)`` callback that keeps one status line on stderr."""
    def report(done, total):
        print(f"\r{label}: compiled {done}/{total}", end="\n" if done == total else "",
              file=sys.stderr, flush=True)
    return report


def run(args) -> int:
    check_triton_version()
    allow_tf32 = cudnn_allows_tf32()
    arch = ARCHES[args.arch]
    rows = inspect_model(args.model, DTYPES[args.dtype], arch, args.batch, args.size,
                         allow_tf32, args.jobs, stderr_progress(f"inspect {args.model}"),
                         getattr(args, "geometry", None), getattr(args, "config", None),
                         references=bool(args.json))
    if not rows:
        print(f"no geometry of {args.model} and config matches the filters", file=sys.stderr)
        return 2
    print(format_table(rows, allow_tf32))
    print("\nbest candidate per geometry (lowest issue/kFMA among clean rows, "
          "not serialised where one is):")
    for geometry, row in best_per_geometry(rows, allow_tf32).items():
        print(f"  {geometry.describe():58} {row.config.describe():30} "
              f"{issue_per_kfma(row):.2f}  {row.result.tensor_core}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump([row_record(row, allow_tf32) for row in rows], file, indent=1)
    failed = [row for row in rows if row_problems(row, allow_tf32)]
    geometries = len({row.geometry for row in rows})
    print(f"\n{args.model} {args.dtype} {args.arch}: {len(rows)} specialisations x configs "
          f"({geometries} geometries), {len(failed)} failed")
    for row in failed:
        for problem in row_problems(row, allow_tf32):
            print(f"FAIL {row.geometry.describe()} [{row.config.describe()}]: {problem}")
    return 1 if failed else 0
