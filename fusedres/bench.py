"""``fusedres bench``: time eager PyTorch against the fused model on this machine.

Contenders, all in inference mode on the same input:
  eager       torchvision's model, channels_last (the strongest plain eager baseline;
              ``torch.backends.cudnn.benchmark = True`` on CUDA)
  eager_nchw  torchvision's model as users run it by default (NCHW)
  fused       ``fusedres.fuse`` of the same model
  fused_graphs  (CUDA) the fused model replayed through CUDA graphs
  fused_triton  (CUDA) a second fused model choosing among Triton configs only (no cuDNN
              candidate): the kernels' own speed
  compile     ``torch.compile`` (default mode) of the channels_last eager model (``--compile``)
  compile_max (CUDA, ``--compile-max``) ``torch.compile(mode="max-autotune")`` with Inductor's
              freezing (BatchNorm folded into the convolutions)

They are timed interleaved, round by round (see ``fusedres.timing``).  Progress goes to
stderr, the result table to stdout.
"""
import argparse
import copy
import json
import platform
import sys
import time

import torch

from . import timing
from .cli import positive_float, positive_int
from .supported import UnsupportedModelError

# Per device: (batch, image size, dtype, timing budget in seconds).  The CPU default keeps a
# whole run at about a minute on a 2-core machine.
DEFAULTS = {
    "cpu": (4, 224, "float32", 30.0),
    "cuda": (256, 224, "float16", 20.0),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BASELINE = "eager"
WARMUP_CALLS = 3
MIN_ROUNDS, MAX_ROUNDS = 5, 1000  # interleaved rounds, whatever --seconds asks for


def eager_model(name: str, seed: int = 0) -> torch.nn.Module:
    """torchvision's ``name`` (timm's for ``timm:<name>``) in eval mode with random weights and
    random, non-trivial BatchNorm statistics (fresh init has mean 0 / var 1, which would hide
    folding errors)."""
    from .model_names import create_eager

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_eager(name).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model


def _inference(model, x):
    def call():
        with torch.inference_mode():
            return model(x)
    return call


def model_contenders(name, batch, size, dtype, device, compile_model=False):
    """``{contender: zero-argument callable returning the logits}`` for one configuration.
    ``compile_model``: False, True (``compile``) or "max" (``compile`` and, on CUDA,
    ``compile_max``)."""
    from .cuda_graphs import CUDAGraphRunner
    from .fusing import fuse

    eager_nchw = eager_model(name).to(device=device, dtype=dtype)
    eager_cl = copy.deepcopy(eager_nchw).to(memory_format=torch.channels_last)
    fused = fuse(eager_nchw)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    x = x.to(device=device, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    contenders = {
        "eager": _inference(eager_cl, x_cl),
        "eager_nchw": _inference(eager_nchw, x),
        "fused": _inference(fused, x_cl),
    }
    if device.type == "cuda":
        # Launch-bound small batches are what CUDA graphs are for (fusedres.CUDAGraphRunner).
        contenders["fused_graphs"] = _inference(CUDAGraphRunner(fused), x_cl)
        # The Triton kernels alone (no cuDNN candidate), a model of its own so that its
        # launch plans are its own: the kernels' own gap stays visible.
        contenders["fused_triton"] = _triton_only(_inference(fuse(eager_nchw), x_cl))
    if compile_model:
        contenders["compile"] = _inference(torch.compile(eager_cl), x_cl)
        if compile_model == "max" and device.type == "cuda":
            contenders["compile_max"] = _compile_max(eager_cl, x_cl)
    return contenders


def _triton_only(fn):
    from .kernels import triton_only

    def call():
        with triton_only():
            return fn()
    return call


def _compile_max(model, x):
    """The strongest torch.compile: mode="max-autotune" (Triton GEMM/conv templates tuned
    against cuDNN/cuBLAS) with Inductor's freezing, which folds BatchNorm into the
    convolutions' weights.  Freezing is read when the graph compiles, on the first call."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(copy.deepcopy(model), mode="max-autotune")
    calls = []

    def call():
        with torch.inference_mode():
            if calls:
                return compiled(x)
            calls.append(1)
            with inductor_config.patch(freezing=True):
                return compiled(x)
    return call


def max_abs_differences(contenders, baseline=BASELINE):
    """``{contender: max |output - baseline output|}``, in float32."""
    reference = contenders[baseline]().float()
    return {name: (fn().float() - reference).abs().max().item()
            for name, fn in contenders.items()}


def environment(device: torch.device) -> dict:
    """Device name and library versions, for result files."""
    import triton

    env = {"device": device.type, "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "torch_threads": torch.get_num_threads()}
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["device_name"] = _cpu_name()
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()




def add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import model_names

    parser.add_argument("--model", default="resnet18", type=model_names.argument, metavar="NAME",
                        help=f"{model_names.HELP}; default: resnet18")
    parser.add_argument("--batch", type=positive_int,
                        help="batch size (default: 4 on CPU, 256 on CUDA)")
    parser.add_argument("--size", type=positive_int, help="image height and width (default: 224)")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="default: float32 on CPU, float16 on CUDA")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile (default mode) of the eager model; "
                             "compiling takes a while")
    parser.add_argument("--compile-max", action="store_true",
                        help="also time torch.compile(mode='max-autotune') with freezing, on "
                             "CUDA (implies --compile); compiling takes minutes")
    parser.add_argument("--seconds", type=positive_float,
                        help="timing budget after warm-up; at least 5 interleaved rounds are "
                             "timed however long they take (default: 30 on CPU, 20 on CUDA)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a bar chart PNG (needs matplotlib)")


def _say(message: str) -> None:
    print(f"[fusedres bench] {message}", file=sys.stderr, flush=True)


def _warm_up_message(device: torch.device, compile_model: bool) -> str:
    """What the warm-up is for on this device (no cuDNN and no Triton compilation on CPU)."""
    work = (["Triton compilation and autotuning", "cuDNN algorithm search"]
            if device.type == "cuda" else [])
    if compile_model:
        work.append("torch.compile")
    why = f"; {', '.join(work)} happen here" if work else ""
    return f"warming up: {WARMUP_CALLS} calls per contender{why}"


def _timing_message(contenders: int, rounds: int, seconds_per_round: float,
                    budget_s: float) -> str:
    """The timing plan with its expected duration, from the warm-up's per-call times: the
    minimum number of rounds can outlast --seconds by far on a slow machine."""
    message = (f"timing {contenders} contenders interleaved, {rounds} rounds "
               f"(~{rounds * seconds_per_round:.0f} s")
    if rounds == MIN_ROUNDS and rounds * seconds_per_round > budget_s:
        message += f"; {MIN_ROUNDS} rounds is the minimum, longer than --seconds {budget_s:g}"
    return message + ")"


def _round_progress(done: int, rounds: int) -> None:
    if sys.stderr.isatty():
        end = "\n" if done == rounds else ""
        print(f"\r[fusedres bench] timing: round {done}/{rounds}", end=end, file=sys.stderr,
              flush=True)
    elif done == rounds or done % max(1, rounds // 4) == 0:
        _say(f"timing: round {done}/{rounds}")


def measure(args, device: torch.device) -> dict:
    """Build, warm up, check and time the contenders; the results as a JSON-ready dict."""
    dtype = DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    compile_model = "max" if args.compile_max else args.compile
    contenders = model_contenders(args.model, args.batch, args.size, dtype, device,
                                  compile_model)
    _say(f"built {args.model}: {', '.join(contenders)}")
    _say(_warm_up_message(device, compile_model))
    last = timing.warm_up(contenders, device, calls=WARMUP_CALLS)
    differences = max_abs_differences(contenders)
    seconds_per_round = sum(last.values())
    rounds = timing.rounds_for_budget(seconds_per_round, args.seconds, MIN_ROUNDS, MAX_ROUNDS)
    _say(_timing_message(len(contenders), rounds, seconds_per_round, args.seconds))
    times = timing.interleaved(contenders, device, rounds, progress=_round_progress)
    baseline = timing.median(times[BASELINE])
    results = []
    for name, series in times.items():
        latency = timing.median(series)
        results.append({"contender": name, "median_s": latency,
                        "images_per_s": args.batch / latency, "speedup_vs_eager": baseline / latency,
                        "max_abs_diff_vs_eager": differences[name], "times_s": series})
    return {"config": {"model": args.model, "batch": args.batch, "size": args.size,
                       "dtype": args.dtype, "rounds": rounds},
            "environment": environment(device), "results": results,
            "backends": backends(args.model, args.batch, args.size, dtype)}


def backends(name, batch, size, dtype):
    """``{launch geometry: what the tuner chose for it in this process}``: ``cudnn``, a Triton
    config, or "-" where nothing was tuned (CPU, or autotuning off)."""
    from .kernels import cudnn_allows_tf32
    from .kernels.conv import launcher
    from .model_names import create_fused
    from .trace import trace_launches, unique
    with torch.device("meta"):
        fused = create_fused(name)
    choices = {}
    for geometry in unique(trace_launches(fused, batch, (size, size), dtype)):
        config = launcher.chosen_config(geometry, cudnn_allows_tf32())
        choices[geometry.describe()] = "-" if config is None else config.describe()
    return choices


def format_table(report: dict) -> str:
    config, env = report["config"], report["environment"]
    lines = [f"{config['model']}, batch {config['batch']}, 3x{config['size']}x{config['size']}, "
             f"{config['dtype']}, {env['device_name']} ({env['device']}, "
             f"{env['torch_threads']} threads), median of {config['rounds']} interleaved rounds",
             f"{'contender':<12}{'img/s':>10}{'latency ms':>12}{'speedup':>9}"
             f"{'max |diff| vs eager':>21}"]
    for r in report["results"]:
        lines.append(f"{r['contender']:<12}{r['images_per_s']:>10.1f}{r['median_s'] * 1e3:>12.2f}"
                     f"{r['speedup_vs_eager']:>8.2f}x{r['max_abs_diff_vs_eager']:>21.2e}")
    lines.append("speedup = median eager (channels_last) latency / median contender latency")
    chosen = report.get("backends", {})
    if any(choice != "-" for choice in chosen.values()):
        lines.append("fused launches: the tuner's choice (cudnn, or the Triton config)")
        lines += [f"  {geometry:<60} {choice}" for geometry, choice in chosen.items()]
    return "\n".join(lines)


def write_plot(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["contender"] for r in report["results"]]
    rates = [r["images_per_s"] for r in report["results"]]
    config = report["config"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, rates, color=["#4c72b0" if n != "fused" else "#dd8452" for n in names])
    for bar, r in zip(bars, report["results"]):
        ax.annotate(f"{r['speedup_vs_eager']:.2f}x", (bar.get_x() + bar.get_width() / 2,
                                                     bar.get_height()),
                    ha="center", va="bottom")
    ax.margins(y=0.15)  # room for the speedup labels above the bars
    ax.set_ylabel("images / s")
    ax.set_title(f"{config['model']} batch {config['batch']} {config['dtype']} "
                 f"on {report['environment']['device_name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fill_defaults(args, device: torch.device) -> None:
    batch, size, dtype, seconds = DEFAULTS[device.type]
    args.batch = args.batch or batch
    args.size = args.size or size
    args.dtype = args.dtype or dtype
    args.seconds = args.seconds if args.seconds is not None else seconds


def run(args) -> int:
    device_type = args.device
    if device_type == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        print("fusedres bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fusedres bench: --plot needs matplotlib, which is not installed; "
                  "install it with: pip install 'fusedres[plot]'", file=sys.stderr)
            return 2
    device = torch.device(device_type)
    _fill_defaults(args, device)
    start = time.perf_counter()
    try:
        report = measure(args, device)
    except UnsupportedModelError as error:
        print(f"fusedres bench: {args.model} cannot be fused: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        _say(f"wrote {args.json}")
    if args.plot:
        write_plot(report, args.plot)
        _say(f"wrote {args.plot}")
    _say(f"done in {time.perf_counter() - start:.0f} s")
    return 0
