"""Time the first and second forward of a fresh fused model in this process, and count the
kernels compiled meanwhile (new cubins in Triton's cache folder).

    python -m benchmarks.first_call --model resnet50 --dtype float16 --batch 256

Run it after ``fusedres warmup`` to see what the warm-up leaves to the first call (loading
compiled kernels and, unless a previous process stored them, the tuner's benchmarks); run it
twice to see a process that finds the tuning stored.  Prints one JSON line.
"""
import argparse
import glob
import json
import os
import time

import torch

import fusedres
from fusedres.kernels import autotune


def _cubins():
    root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton",
                                                              "cache")
    return len(glob.glob(os.path.join(root, "**", "*.cubin"), recursive=True))


def _stored_choices():
    return len(glob.glob(os.path.join(autotune.cache_folder(), "*.json")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(fusedres.MODELS))
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    dtype = getattr(torch, args.dtype)
    model = fusedres.MODELS[args.model]().to("cuda", dtype).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device="cuda", dtype=dtype)
    cubins, stored = _cubins(), _stored_choices()
    times = []
    with torch.inference_mode():
        for _ in range(2):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    print(json.dumps({
        "model": args.model, "dtype": args.dtype, "batch": args.batch,
        "first_forward_s": round(times[0], 3), "second_forward_s": round(times[1], 4),
        "kernels_compiled": _cubins() - cubins,
        "tuning_stored_before": stored, "tuning_stored_after": _stored_choices(),
        "autotune": autotune.enabled(),
    }))


if __name__ == "__main__":
    main()
