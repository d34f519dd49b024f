#!/usr/bin/env bash
# The GPU runs whose results are committed here (gpu-*.json), from the repository root:
#   bash book/data/gpu-run.sh OUTPUT_DIR
# The first attempt (gpu-first-attempt/) also timed swa_compiled; see the benchmarks chapter.
# gpu-cuda-check.txt was written by the same check (same shapes, seed and tolerances) run as a
# standalone script, before it moved into the package as swa_tutorial.bench.device_check.
set -u
OUT=${1:-book/data}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu-nvidia-smi.txt"
python -m swa_tutorial.bench.device_check --device cuda | tee "$OUT/gpu-cuda-check.txt"
B="python -m swa_tutorial.bench --device cuda --no-progress --loop-max-len 2048 --min-time 0.3
   --impls dense_sdpa loop swa flex hf_longformer"
$B --dtype bfloat16 --mode fwd -L 1024 2048 4096 8192 16384 32768 65536 --time-budget 110 \
   -o "$OUT/gpu-bfloat16-fwd.json"
$B --dtype float32 --mode fwd -L 1024 2048 4096 8192 16384 32768 65536 --time-budget 90 \
   -o "$OUT/gpu-float32-fwd.json"
$B --dtype bfloat16 float32 --mode fwd+bwd -L 2048 8192 32768 --time-budget 90 \
   -o "$OUT/gpu-fwd-bwd.json"
