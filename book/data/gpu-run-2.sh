#!/usr/bin/env bash
# The next GPU run (not made yet): the Triton kernel's correctness on CUDA, then the tiled and
# fused paths against the chunked one, dense SDPA and FlexAttention at long lengths. On one
# H100 or H200, from the repository root (about 8 minutes):
#   bash book/data/gpu-run-2.sh OUTPUT_DIR
# The same commands on small shapes on the CPU, to check that they run (Triton's interpreter for
# the kernel check; the sweep records triton as unsupported there):
#   bash book/data/gpu-run-2.sh OUTPUT_DIR --cpu-trial
# Each sweep writes its JSON file after every configuration and stops starting new ones after its
# time budget; `timeout` ends a step that overruns, keeping what it measured. gpu-run.sh made
# the committed gpu-*.json files.
set -u
OUT=${1:?usage: bash book/data/gpu-run-2.sh OUTPUT_DIR [--cpu-trial]}
mkdir -p "$OUT"
if [ "${2:-}" = "--cpu-trial" ]; then
  DEVICE=cpu LENGTHS=512 SHAPE="-H 2 -w 64 --min-time 0.1 --threads 1" BUDGET=90
  export TRITON_INTERPRET=1
  CHECK="--device cpu --tiny"
else
  DEVICE=cuda LENGTHS="16384 32768 65536" SHAPE="-H 12 -w 256 --min-time 0.3" BUDGET=65
  CHECK="--device cuda"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu-nvidia-smi.txt"
  timeout 45 python -m swa_tutorial.bench.device_check --device cuda | tee "$OUT/gpu-cuda-check.txt"
fi
# the kernel against float64 dense attention: every window form, padding, dtype, gradients
timeout 90 python -m swa_tutorial.bench.triton_check $CHECK --out "$OUT/gpu-triton-check.json"
# B = 1, d = 64; the fused paths first, so that a budget cut falls on the measured ones
SWEEP="python -m swa_tutorial.bench --device $DEVICE --no-progress -B 1 -d 64 $SHAPE
       -L $LENGTHS --impls triton flex tiles swa dense_sdpa --time-budget $BUDGET"
for DTYPE in bfloat16 float32; do
  for MODE in fwd fwd+bwd; do
    timeout $((BUDGET + 35)) $SWEEP --dtype $DTYPE --mode $MODE \
      -o "$OUT/gpu2-$DTYPE-${MODE/+/-}.json"
  done
done
