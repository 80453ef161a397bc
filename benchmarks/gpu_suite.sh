#!/usr/bin/env bash
# Every benchmarks/compare.py measurement on one GPU, in under 10 minutes, as JSON lines.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]      (default: $OUT, else benchmarks/gpu_out)
#
# Writes OUT_DIR/compare.jsonl (one line per measurement, each with its precision and TF32
# setting), OUT_DIR/gpu.txt (nvidia-smi) and OUT_DIR/log.txt. Each group runs under its own
# time limit, so that one failure or overrun leaves the others' lines.
#
# The GPU image has jax, flax, optax, orbax, chex, absl, torch and torchvision. compare.py
# also needs captum and scikit-learn (k-means); experiments.train needs grain,
# tensorflow-datasets and ml_collections. Put their wheels in benchmarks/wheels/ beforehand
# (a git-ignored folder; carry it to the device):
#   pip download --no-deps -d benchmarks/wheels captum scikit-learn threadpoolctl joblib \
#       ml_collections grain tensorflow-datasets
# They are installed here with --no-deps, so that the image's torch and jax stay as they are.
#
# Precision, pinned and recorded on both sides in every line:
#   1. float32 with TF32 off (jax_default_matmul_precision=highest; torch allow_tf32=False);
#   2. float32 with TF32 on both sides (--tf32);
#   3. bf16: protojax train.precision=bfloat16, torch autocast(bfloat16) with channels_last;
#      the ResNet-50 step reports its MFU against the measured bf16 matmul rate.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/gpu_out}}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/log.txt"
JSONL="$OUT_DIR/compare.jsonl"

if compgen -G "benchmarks/wheels/*.whl" >/dev/null; then
  pip install --no-deps --no-index -q benchmarks/wheels/*.whl >>"$LOG" 2>&1 ||
    echo "wheel install failed; see $LOG" >&2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  >"$OUT_DIR/gpu.txt" 2>&1 || true
export XLA_PYTHON_CLIENT_PREALLOCATE=false # torch shares the GPU in the same process
export JAX_COMPILATION_CACHE_DIR="$OUT_DIR/jax_cache"

group() { # group SECONDS ARGS...: one compare.py invocation under a time limit
  local limit=$1
  shift
  echo "== $(date -u +%H:%M:%S) compare.py $*" | tee -a "$LOG"
  timeout "$limit" python benchmarks/compare.py --device=gpu --out="$JSONL" "$@" >>"$LOG" 2>&1
  local code=$?
  [ $code -eq 0 ] || echo "   exit $code (124: over ${limit}s)" | tee -a "$LOG"
}

start=$(date +%s)
group 150 --only=protovae,protopnet_joint,push,blackbox --repeats=3 --steps=5
group 90 --only=protovae,protopnet_joint --repeats=3 --steps=5 --tf32
group 110 --only=resnet50_step,protopnet_joint,protovae --repeats=3 --steps=5 --precision=bfloat16
group 150 --only=relax,integrated_gradients,smoothgrad,kmeans --repeats=3 --steps=1 \
  --kmeans_n=200000 --kmeans_d=512 --kmeans_k=100
echo "== done in $(($(date +%s) - start)) s; $(wc -l <"$JSONL" 2>/dev/null || echo 0) lines" |
  tee -a "$LOG"
