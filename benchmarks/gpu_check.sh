#!/usr/bin/env bash
# One GPU check in one device call of at most 8 minutes (H100/H200, 16 cores): card and
# versions, a parallel warm-up compile, the model and layer benchmarks (fp16 batch 256 first,
# with torch.compile and CUDA graphs), the GPU tests, small batches, host time per launch, and
# last torch.compile max-autotune; raw results and a markdown summary in OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Time plan (seconds; each stage has a hard limit, cut to what is left of the 460 s total when
# that is less, and the stage is skipped when under 20 s are left; the limits add up to more
# than the total, so on a slow day the last stages, compile_max first, are the ones cut).
# "took" is what two H200 runs measured (2026-11-28, benchmarks/results/); the estimates
# before them came from counts made on CPU.
#   stage         limit  took     what
#   environment     -    17-25    nvidia-smi, versions
#   warmup         90    41-50    ResNet-18/34/50 fp16 at batch 256 and 1: 68 geometries, 408
#                                 compiles on 16 cores then, 463 now (the persistent
#                                 candidates), through Triton's JIT into its cache
#   first_call     50    21-24    two fresh processes time ResNet-50's first forward after the
#                                 warm-up (the first runs the tuner, the second finds it stored)
#   models        110    57-70    fp16 b256, 3 models x (eager, eager NCHW, fused, CUDA graphs,
#                                 torch.compile); tuner choices come from disk
#   layers        150    26-31    34 layer geometries, tuner choices from disk (then; each
#                                 contender's GPU time and host time, the references and the
#                                 reference GEMM's ~10 compiles now come on top)
#   gpu_tests     120    >82      pytest -m gpu, FUSEDRES_AUTOTUNE=0 (numerics, not the tuner;
#                                 one test autotunes): every new shape compiles, one at a time
#   models_small   60    26-32    fp16 batch 1 (launch-bound: CUDA graphs), ResNet-18/50
#   host           45    -        host time per launch, launch plans vs the normal path (new;
#                                 ~8 s on the CPU stand-in)
#   compile_max   180    -        ResNet-50/18 fp16 b256 with torch.compile max-autotune +
#                                 freezing (new; its compile time is unknown, so it is last).
#                                 `fusedres inspect` left the GPU run for it: sm_90 code is
#                                 inspected the same on a CPU machine (README).
#
# Runs from the source checkout (PYTHONPATH), no pip install: torch, triton, torchvision,
# pytest, pytest-benchmark and hypothesis must be installed.  Stage output, JSON, the
# launched kernels' registers and the tuner's records are packed after every stage into
# OUTDIR/gpu_check.tar.gz, beside OUTDIR/summary.md and OUTDIR/log.txt, so a run cut off
# from outside still returns what it measured.  The exit status is non-zero if any stage
# failed or was skipped.  Without a CUDA device it does a dry run of the same stages on a
# tiny CPU selection (to check the script itself).
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
START=$SECONDS
TOTAL=${GPU_CHECK_TOTAL_S:-460}  # a shorter call: GPU_CHECK_TOTAL_S=300
STATUS=0
WORK=$(mktemp -d /tmp/fusedres-gpu-check.XXXXXX)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# One Triton cache for every stage: compiles and tuner choices carry over.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$WORK/triton-cache}
unset TRITON_INTERPRET

log() { echo "[gpu_check $((SECONDS - START))s] $*" | tee -a "$OUT/log.txt"; }

pack() {
    cp -f "$OUT/log.txt" "$WORK/" 2>/dev/null
    [ -d "$TRITON_CACHE_DIR/fusedres-autotune" ] && cp -rf "$TRITON_CACHE_DIR/fusedres-autotune" "$WORK/"
    tar czf "$OUT/gpu_check.tar.gz" -C "$WORK" --exclude triton-cache . 2>/dev/null
}

# stage NAME LIMIT_S COMMAND...: run with a time limit, output to WORK/NAME.txt; skipped
# when it could overrun the total.
stage() {
    local name=$1 limit=$2; shift 2
    if [ $((SECONDS - START + limit)) -gt "$TOTAL" ]; then
        local left=$((TOTAL - (SECONDS - START)))
        if [ "$left" -lt 20 ]; then
            STATUS=1; log "$name: SKIPPED, ${left}s of the ${TOTAL}s budget left"; return
        fi
        log "$name: limit cut from ${limit}s to ${left}s to fit the budget"; limit=$left
    fi
    log "$name (limit ${limit}s): $*"
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$WORK/$name.txt" 2>&1
    local rc=$?
    [ "$rc" -eq 0 ] || { STATUS=1; log "$name: exit status $rc (124: over its ${limit}s limit)"; }
    tail -n 4 "$WORK/$name.txt" | sed 's/^/    /' | tee -a "$OUT/log.txt"
    pack
}

log "plan (limits, s): warmup 90, first_call 50, models 110, layers 150, gpu_tests 120, models_small 60, host 45, compile_max 180; total budget ${TOTAL}s"

if python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    DRY=0
    MODELS="resnet18 resnet34 resnet50"
    HEADLINE="float16 and b256 and not bfloat16"
    SMALL="(resnet18 or resnet50) and b1- and float16 and not bfloat16"
    COMPILE_MAX="(resnet18 or resnet50) and float16 and b256 and not bfloat16"
    LAYERS=""
else
    DRY=1
    log "no CUDA device: dry run on a tiny CPU selection"
    MODELS="resnet18"
    HEADLINE="resnet18 and b1-"
    SMALL="resnet18 and b8-"
    COMPILE_MAX="resnet18 and b8-"
    LAYERS="64x56x56-64-k3s1"
fi

environment() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    # FUSEDRES_COMMIT: what the caller checked out, where the copy's git metadata is stale.
    echo "commit: ${FUSEDRES_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 \
        || echo "nvidia-smi: not available"
    python - <<'EOF'
import numpy, torch, triton
print(f"torch {torch.__version__}  cuda {torch.version.cuda}  cudnn {torch.backends.cudnn.version()}")
print(f"triton {triton.__version__}  numpy {numpy.__version__}")
try:
    import torchvision
    print(f"torchvision {torchvision.__version__}")
except ImportError:
    print("torchvision: not installed")
if torch.cuda.is_available():
    print(f"device {torch.cuda.get_device_name()}  capability {torch.cuda.get_device_capability()}")
EOF
}
environment >"$OUT/environment.txt" 2>&1
cp -f "$OUT/environment.txt" "$WORK/"
log "environment:"; sed 's/^/    /' "$OUT/environment.txt" | tee -a "$OUT/log.txt"

if [ "$DRY" -eq 0 ]; then
    # shellcheck disable=SC2086
    stage warmup 90 python -m fusedres warmup --model $MODELS --dtype float16 --batch 256 1
else  # the same command, compiling for sm_90 on the CPU (default configs only: 2 cores)
    stage warmup 90 env FUSEDRES_AUTOTUNE=0 python -m fusedres warmup --model $MODELS \
        --dtype float16 --batch 256 --arch sm_90
fi

if [ "$DRY" -eq 0 ]; then
    # A fresh process after the warm-up (compiles: expect 0; the tuner benchmarks), then a
    # second one that finds the tuning stored.
    stage first_call 50 bash -c "python -m benchmarks.first_call --model resnet50 && \
        python -m benchmarks.first_call --model resnet50"
else
    log "first_call: skipped (dry run: needs a CUDA device)"
fi

BENCH=(python -m pytest -q -p no:cacheprovider --benchmark-only --min-speedup 0
       --benchmark-columns=median,iqr,rounds)
export FUSEDRES_KERNEL_REPORT="$WORK/kernels_models.json"
stage models 110 "${BENCH[@]}" benchmarks/test_models.py -k "$HEADLINE" --bench-compile on \
    --benchmark-json "$WORK/models.json"
export FUSEDRES_KERNEL_REPORT="$WORK/kernels_layers.json"
stage layers 150 "${BENCH[@]}" benchmarks/test_layers.py ${LAYERS:+-k "$LAYERS"} \
    --benchmark-json "$WORK/layers.json"
unset FUSEDRES_KERNEL_REPORT

# On a CPU every GPU test skips with its reason (the command itself is checked).
stage gpu_tests 120 env FUSEDRES_AUTOTUNE=0 python -m pytest tests -m gpu -q -p no:cacheprovider -rs

stage models_small 60 "${BENCH[@]}" benchmarks/test_models.py -k "$SMALL" --bench-compile off \
    --benchmark-json "$WORK/models_small.json"

# Host time per fused launch at batch 1, launch plans against the normal path (on a CPU: the
# stand-in GPU).
stage host 45 "${BENCH[@]}" benchmarks/test_host_overhead.py --benchmark-json "$WORK/host.json"

# The strongest torch.compile (max-autotune + freezing) beside fused, eager and default
# compile, fp16 batch 256, ResNet-50 and -18; its compiles take minutes, so it comes last and
# gets what the budget has left.
stage compile_max 180 "${BENCH[@]}" benchmarks/test_models.py -k "$COMPILE_MAX" \
    --bench-compile max --benchmark-json "$WORK/compile_max.json"

JSONS=()
for f in models layers models_small compile_max; do [ -s "$WORK/$f.json" ] && JSONS+=("$WORK/$f.json"); done
if [ ${#JSONS[@]} -gt 0 ]; then
    python -m benchmarks.summary "${JSONS[@]}" --min-speedup 1.0 >"$OUT/summary.md" \
        || { STATUS=1; log "summary failed"; }
    [ "$DRY" -eq 1 ] && sed -i '1a\
\
**Dry run on a CPU: not measured on a GPU.**' "$OUT/summary.md"
    log "summary: $OUT/summary.md"
else
    STATUS=1; log "no benchmark JSON was written"
fi
log "done (exit status $STATUS)"
pack
exit "$STATUS"
