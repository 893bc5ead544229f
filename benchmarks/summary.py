"""Markdown summary of ``--benchmark-json`` files: machine, the gate's ratio table, model and
layer results, and the GPU targets of the benchmark issue.

    python -m benchmarks.summary OUT/models.json OUT/layers.json > OUT/summary.md
"""
import argparse
import json
import sys
from collections import defaultdict
from types import SimpleNamespace

from benchmarks import gate

TARGET_MODEL_SPEEDUP = 1.5   # fused/eager, fp16 batch 256, resnet18 and resnet50
TARGET_LAYER_SPEEDUP = 1.2   # fused kernel / eager sequence, every layer geometry
# fused against torch.compile (default mode) and compile_max, fp16 batch 256 (issue 22).
COMPILE_TARGETS = {"resnet50": {"compile": 1.1, "compile_max": 1.0},
                   "resnet18": {"compile": 1.0}}


def load(paths):
    """(machine info of the first file, every benchmark entry of all files)."""
    machine, entries = {}, []
    for path in paths:
        with open(path) as fh:
            data = json.load(fh)
        machine = machine or data.get("machine_info", {})
        entries += [b for b in data["benchmarks"] if "contender" in (b.get("params") or {})]
    return machine, entries


def _by_comparison(entries):
    table = defaultdict(dict)
    for b in entries:
        table[gate.comparison_key(b["name"], b["params"])][b["params"]["contender"]] = b
    return table


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


MODEL_CONTENDERS = ("eager", "eager_nchw", "fused", "fused_triton", "fused_graphs", "compile",
                    "compile_max")


def model_rows(table):
    """Images/s per contender, fused against eager and both compiles, and the compiles' first
    call (compile time) in seconds."""
    contenders, compiles = MODEL_CONTENDERS, ("compile", "compile_max")
    lines = ["| configuration | " + " | ".join(f"{c} img/s" for c in contenders)
             + " | fused/eager | fused/compile | fused/compile_max | fused TFLOP/s | "
             + " | ".join(f"{c} first call s" for c in compiles) + " |",
             "|---" * (len(contenders) + 7) + "|"]
    for key, runs in sorted(table.items()):
        if not key.startswith("test_model"):
            continue
        rates = [runs[c]["extra_info"]["images_per_s"] if c in runs else None for c in contenders]
        median = {c: runs[c]["stats"]["median"] for c in runs}
        vs = [median[c] / median["fused"] if c in median and "fused" in median else None
              for c in ("eager", *compiles)]
        tflops = runs["fused"]["extra_info"]["tflop_per_s"] if "fused" in runs else None
        first = [runs[c]["extra_info"].get("first_call_s") if c in runs else None
                 for c in compiles]
        lines.append(f"| {key} | " + " | ".join(_cell(r, ".1f") for r in rates)
                     + " | " + " | ".join(_cell(v, ".2f") for v in vs)
                     + f" | {_cell(tflops, '.1f')} | "
                     + " | ".join(_cell(f, ".1f") for f in first) + " |")
    return lines


def layer_rows(table):
    """Per layer: wall time of a synchronised call, GPU time alone and host time (the last
    two where the run split them), the fused/eager ratios, the references' GPU time over
    fused's (conv alone, and the 1x1 layers' GEMM), and what the fused launch ran."""
    lines = ["| layer | eager ms | fused ms | speedup | eager GPU ms | fused GPU ms | GPU speedup "
             "| conv alone / fused (GPU) | mm / fused (GPU) | triton mm / fused (GPU) "
             "| fused host ms | fused TFLOP/s | fused GB/s | backend / config |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, runs in sorted(table.items()):
        if not key.startswith("test_layer") or "fused" not in runs or "eager" not in runs:
            continue
        fused, eager = runs["fused"], runs["eager"]
        gpu = [run["extra_info"].get("gpu_ms") for run in (eager, fused)]
        gpu_speedup = gpu[0] / gpu[1] if None not in gpu else None
        # The references' GPU time over fused's: how close fused (epilogue included) comes
        # to the bare convolution (cuDNN) or GEMM (cuBLAS, Triton's persistent TMA GEMM).
        refs = [runs[name]["extra_info"].get("gpu_ms") / gpu[1]
                if name in runs and gpu[1] and runs[name]["extra_info"].get("gpu_ms")
                else None for name in ("conv_alone", "mm", "triton_mm")]
        cells = [key, f"{eager['stats']['median'] * 1e3:.3f}",
                 f"{fused['stats']['median'] * 1e3:.3f}",
                 f"{eager['stats']['median'] / fused['stats']['median']:.2f}",
                 _cell(gpu[0], ".3f"), _cell(gpu[1], ".3f"), _cell(gpu_speedup, ".2f"),
                 *(_cell(r, ".2f") for r in refs),
                 _cell(fused["extra_info"].get("host_ms"), ".3f"),
                 f"{fused['extra_info']['tflop_per_s']:.2f}",
                 f"{fused['extra_info']['gb_per_s']:.1f}",
                 fused["extra_info"].get("config", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def target_lines(ratios):
    """The issue's GPU targets (fp16, batch 256), checked where the run measured them."""
    def find(prefix, *needles):
        return [r for r in ratios if r.key.startswith(prefix) and all(n in r.key for n in needles)]

    lines = []
    for model in ("resnet18", "resnet50"):
        for r in find("test_model", f"model={model}", "dtype=float16", "batch=256"):
            ok = r.speedup is not None and r.speedup >= TARGET_MODEL_SPEEDUP
            lines.append(f"- {model} fp16 b256 fused/eager {r.speedup:.2f}x "
                         f"(target >= {TARGET_MODEL_SPEEDUP}x): {'met' if ok else 'NOT met'}")
            for name, target in COMPILE_TARGETS[model].items():
                if name in r.others:
                    ok = r.others[name] >= target
                    lines.append(f"- {model} fp16 b256 fused/{name} {r.others[name]:.2f}x "
                                 f"(target >= {target}x): {'met' if ok else 'NOT met'}")
    layers = find("test_layer", "dtype=float16") or find("test_layer")
    if layers:
        worst = min(layers, key=lambda r: r.speedup or 0.0)
        ok = all((r.speedup or 0.0) >= TARGET_LAYER_SPEEDUP for r in layers)
        lines.append(f"- layers: worst fused/eager {worst.speedup or 0.0:.2f}x at {worst.key} "
                     f"(target every layer >= {TARGET_LAYER_SPEEDUP}x): "
                     f"{'met' if ok else 'NOT met'}")
    return lines or ["- no fp16 batch-256 results in these files"]


def render(machine, entries, min_speedup):
    # The gate's own reading of the entries (wall or GPU time per comparison).
    results = gate.results_from_benchmarks(
        SimpleNamespace(name=b["name"], params=b["params"], has_error=False,
                        stats=SimpleNamespace(median=b["stats"]["median"]),
                        extra_info=b.get("extra_info") or {}) for b in entries)
    verdict = gate.judge(gate.compute_ratios(results), min_speedup)
    env = machine.get("fusedres", {})
    table = _by_comparison(entries)
    out = ["# fusedres benchmark summary", "",
           "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in sorted(env.items())]
    out += ["", "## Targets", ""] + target_lines(verdict.ratios)
    out += ["", "## Models (median of interleaved rounds)", ""] + model_rows(table)
    out += ["", "## Layers", ""] + layer_rows(table)
    out += ["", "## Speedup gate", "", "```", gate.format_table(verdict, min_speedup), "```", ""]
    return "\n".join(out), verdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("--min-speedup", type=float, default=0.0)
    args = parser.parse_args(argv)
    text, _ = render(*load(args.json), args.min_speedup)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
