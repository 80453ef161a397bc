#!/usr/bin/env bash
# XLA:CPU flags on the ProtoPNet ResNet-34 joint step (224 px), each against the PyTorch
# reference in the same process (the ratio cancels the shared machine's load).
#
#   bash benchmarks/xla_cpu_flags.sh OUT.jsonl [BATCH] [REPEATS]
#
# One compare.py invocation per flag set (XLA reads XLA_FLAGS once, at start-up); every
# JSON line carries its `xla_flags`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: xla_cpu_flags.sh OUT.jsonl [BATCH] [REPEATS]}
BATCH=${2:-4}
REPEATS=${3:-2}
VARIANTS=(
  ""
  "--xla_cpu_use_onednn=true"
  "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
  "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot"
  "--xla_cpu_use_xnnpack=false"
  "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
  "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
  "--xla_cpu_enable_fast_math=true"
)
for flags in "${VARIANTS[@]}"; do
  echo "== XLA_FLAGS='$flags'"
  XLA_FLAGS="$flags" JAX_ENABLE_COMPILATION_CACHE=false python benchmarks/compare.py \
    --only=protopnet_joint --protopnet_batch="$BATCH" --repeats="$REPEATS" --warmup=0 \
    --out="$OUT" || echo "   failed: $flags"
done
# The reference held to AVX2 (oneDNN picks its ISA at run time; XLA's kernels are built ahead
# of time): how much of the gap is AVX-512 on the PyTorch side.
echo "== ONEDNN_MAX_CPU_ISA=AVX2, default XLA flags"
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 JAX_ENABLE_COMPILATION_CACHE=false \
  python benchmarks/compare.py --only=protopnet_joint --protopnet_batch="$BATCH" \
  --repeats="$REPEATS" --warmup=0 --out="$OUT" || echo "   failed: AVX2 reference"
