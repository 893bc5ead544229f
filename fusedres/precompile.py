"""Pay the first forward's compile cost ahead of time, on every core.

Without it, the first forward of a fused model on a GPU compiles every kernel it launches
one after another (each geometry times each autotune candidate; about a second each).
``fusedres.warmup(model, example_input)`` (or ``fusedres warmup`` on the command line) traces
the launches of one forward on the ``meta`` device and compiles all of them in parallel
worker processes through Triton's own JIT (``fusedres.aot``), into Triton's cache under the
keys the launches will look up.  The first forward afterwards only loads the compiled
kernels and, the first time a geometry is seen on this machine, benchmarks the candidates;
the tuner stores its choices on disk, so later processes skip that too.
"""
import sys
import time
from typing import List, NamedTuple, Optional

import torch

from . import aot, trace
from .kernels import autotune, cudnn_allows_tf32
from .kernels.runtime import sm_count


class WarmupReport(NamedTuple):
    geometries: int
    compiles: int
    seconds: float
    failures: List[str]  # "geometry [config]: error" per compile that failed

    def describe(self) -> str:
        text = (f"compiled {self.compiles} kernels for {self.geometries} geometries in "
                f"{self.seconds:.1f} s")
        return text + (f"; {len(self.failures)} failed" if self.failures else "")


def warmup(model, example_input: torch.Tensor, *, workers: Optional[int] = None,
           progress=None) -> WarmupReport:
    """Compile every kernel ``model(example_input)`` would launch on the input's GPU.

    ``model`` is a fused model (``fusedres.fuse`` or a ``fusedres`` constructor);
    ``example_input`` fixes the batch size, image size and dtype (pass it in the dtype the
    model computes in: under autocast, the autocast dtype).  With autotuning on, every
    candidate config is compiled; with ``FUSEDRES_AUTOTUNE=0``, only the default per geometry.
    ``workers``: parallel compiles, default one per CPU core.  A CPU input has nothing to
    compile and raises ValueError.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise ValueError("example_input must be a 4-D (N, C, H, W) tensor")
    if example_input.device.type != "cuda":
        raise ValueError(f"warm-up compiles GPU kernels; the example input is on "
                         f"{example_input.device} (the CPU path compiles nothing)")
    major, minor = torch.cuda.get_device_capability(example_input.device)
    batch, _, height, width = example_input.shape
    geometries = trace.unique(trace.trace_launches(model, batch, (height, width),
                                                   example_input.dtype))
    return compile_geometries(geometries, major * 10 + minor, sms=sm_count(example_input.device),
                              workers=workers, progress=progress)


def compile_geometries(geometries, arch: int, *, sms: Optional[int] = None,
                       autotuning: Optional[bool] = None, workers: Optional[int] = None,
                       progress=None) -> WarmupReport:
    """Compile every candidate config of every ConvGeometry in ``geometries`` for ``arch``
    with ``sms`` SMs (the device's, so that split-K candidates match its launches; default
    the arch's usual card)."""
    allow_tf32 = cudnn_allows_tf32()
    jobs = [aot.Job(geometry, config, arch, allow_tf32) for geometry in geometries
            for config in aot.candidate_configs(geometry, autotuning, arch, sms)]
    start = time.perf_counter()
    results = aot.compile_in_workers(jobs, workers, progress)
    failures = [f"{job.geometry.describe()} [{job.config.describe()}]: {result.error}"
                for job, result in zip(jobs, results) if result.error is not None]
    return WarmupReport(len(geometries), len(jobs), time.perf_counter() - start, failures)


# ---------------------------------------------------------------- command line

def add_arguments(parser):
    from .gpu_inspect import ARCHES, add_model_arguments
    add_model_arguments(parser, several=True)
    parser.add_argument("--arch", choices=list(ARCHES), default=None,
                        help="target (default: this machine's GPU)")


def run(args) -> int:
    from .gpu_inspect import ARCHES, DTYPES, check_triton_version, specialisations, stderr_progress
    check_triton_version()
    here = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        here = major * 10 + minor
    # Split-K candidates follow the SM count: this GPU's where it is the target, else the
    # usual card's of the named arch.
    arch = ARCHES[args.arch] if args.arch is not None else here
    sms = sm_count(torch.device("cuda")) if arch is not None and arch == here else None
    if arch is None:
        print("fusedres warmup: no CUDA device here; name a target with --arch "
              "(the CPU path compiles nothing)", file=sys.stderr)
        return 2
    geometries = trace.unique([geometry for model in args.model for batch in args.batch
                               for geometry in specialisations(model, DTYPES[args.dtype], batch,
                                                               args.size)])
    names = " ".join(args.model)
    report = compile_geometries(geometries, arch, sms=sms, workers=args.jobs,
                                progress=stderr_progress(f"warmup {names}"))
    tuning = "every autotune candidate" if autotune.enabled() else "default configs only"
    print(f"fusedres warmup {names} {args.dtype} batch {' '.join(map(str, args.batch))} "
          f"sm_{arch}: {report.describe()} ({tuning})")
    for failure in report.failures:
        print(f"FAIL {failure}")
    return 1 if report.failures else 0
