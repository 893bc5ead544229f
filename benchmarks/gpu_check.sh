#!/usr/bin/env bash
# One GPU check, at most ~7 minutes on an H100: card and versions, the GPU test suite, the
# model and layer benchmarks (fp16 batch 256 first, with torch.compile), JSON and a markdown
# summary, all written to OUTDIR.
#
# Time plan (seconds, each a hard limit): install 15, GPU tests 75, inspect 90, models 180, layers 60,
# small batches and other dtypes 75 only while under 330 s.  The first call of every kernel
# geometry autotunes over ~6 configs, each compiled once (~1 s): the models stage pays that
# for ResNet-18/34/50 at fp16 batch 256 and the layers stage reuses Triton's compile cache.
# A stage that hits its limit is interrupted like Ctrl-C, so pytest-benchmark still writes
# the JSON of every benchmark it finished.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Runs offline: torch, triton, torchvision, pytest, pytest-benchmark and hypothesis must be
# installed.  Every stage has its own time limit and the script goes on after a failing
# stage, so OUTDIR always holds what was measured; the exit status is non-zero if any stage
# failed.  Without a CUDA device it does a dry run of the same stages on a tiny CPU
# selection (to check the script itself).
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
START=$SECONDS
STATUS=0
log() { echo "[gpu_check $((SECONDS - START))s] $*" | tee -a "$OUT/log.txt"; }

# stage NAME LIMIT_S COMMAND...: run with a time limit, output to OUT/NAME.txt.
stage() {
    local name=$1 limit=$2; shift 2
    log "$name: $*"
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    [ "$rc" -eq 0 ] || { STATUS=1; log "$name: exit status $rc (124: over its ${limit}s limit)"; }
    tail -n 3 "$OUT/$name.txt" | sed 's/^/    /'
}

stage install 60 pip install -e . --no-deps --no-build-isolation

if python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    DRY=0
    # fp16 batch 256: the targets.  The rest is a trimmed look at small batches and dtypes.
    HEADLINE="float16 and b256 and not bfloat16"
    # batch 32 in all three dtypes, then batch 1 fp16 (launch-bound latency).
    SMALL="resnet18 and (b32 or (b1 and float16 and not bfloat16))"
    LAYERS=""
else
    DRY=1
    log "no CUDA device: dry run on a tiny CPU selection"
    HEADLINE="resnet18 and b1"
    SMALL="resnet18 and b8"
    LAYERS="64x56x56-64-k3s1"
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 \
        || echo "nvidia-smi: not available"
    python - <<'EOF'
import torch, triton
print(f"torch {torch.__version__}  cuda {torch.version.cuda}  cudnn {torch.backends.cudnn.version()}")
print(f"triton {triton.__version__}")
try:
    import torchvision
    print(f"torchvision {torchvision.__version__}")
except ImportError:
    print("torchvision: not installed")
if torch.cuda.is_available():
    print(f"device {torch.cuda.get_device_name()}  capability {torch.cuda.get_device_capability()}")
EOF
} >"$OUT/environment.txt" 2>&1
log "environment:"; sed 's/^/    /' "$OUT/environment.txt"

stage gpu_tests 75 python -m pytest tests -m gpu -q -p no:cacheprovider

# The autotuner compiles ~6 configs per geometry one after another on first use.  `fusedres
# inspect` compiles the same specialisations in parallel on every core; where its compile
# matches the JIT's (same signature, constexprs and options) the Triton cache then serves the
# autotuner, and either way its table checks this machine's Triton/ptxas (registers, spills).
ARCH=$(python -c "import torch; print('sm_%d%d' % torch.cuda.get_device_capability())" 2>/dev/null)
if [ "$DRY" -eq 0 ] && { [ "$ARCH" = sm_80 ] || [ "$ARCH" = sm_90 ]; }; then
    stage inspect 90 bash -c "for m in resnet50 resnet18 resnet34; do
        python -m fusedres inspect --model \$m --dtype float16 --arch $ARCH --batch 256; done"
else
    log "inspect: skipped (dry run, or no sm_80/sm_90 device: ${ARCH:-none})"
fi

BENCH=(python -m pytest -q -p no:cacheprovider --benchmark-only --min-speedup 0
       --benchmark-columns=median,iqr,rounds)
# Models first (their autotuning also serves the layer run: same geometries, warm cache).
stage models 180 "${BENCH[@]}" benchmarks/test_models.py -k "$HEADLINE" --bench-compile on \
    --benchmark-json "$OUT/models.json"
stage layers 60 "${BENCH[@]}" benchmarks/test_layers.py ${LAYERS:+-k "$LAYERS"} \
    --benchmark-json "$OUT/layers.json"
if [ $((SECONDS - START)) -lt 330 ]; then
    stage models_small 75 "${BENCH[@]}" benchmarks/test_models.py -k "$SMALL" \
        --bench-compile off --benchmark-json "$OUT/models_small.json"
else
    log "models_small: skipped, not enough of the 7-minute budget left"
fi

JSONS=()
for f in models layers models_small; do [ -s "$OUT/$f.json" ] && JSONS+=("$OUT/$f.json"); done
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
exit "$STATUS"
