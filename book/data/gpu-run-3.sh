#!/usr/bin/env bash
# The GPU run for the kernel's correctness on CUDA and its race against FlexAttention and SDPA
# (the plan of the GPU issue), in one go, from the repository root:
#   bash book/data/gpu-run-3.sh OUTPUT_DIR              # CUDA
#   bash book/data/gpu-run-3.sh OUTPUT_DIR --cpu-trial  # tiny shapes on the CPU, Triton's interpreter
#
# Needs: one NVIDIA H100 or H200 (Hopper; about 20 GB of its memory at most), PyTorch with CUDA
# and FlexAttention (torch >= 2.5), Triton, nvidia-smi; the package importable from here
# (PYTHONPATH=$PWD). COMMIT=<hash> records the commit where the tree has no .git; PYTHON names the
# interpreter (default python3).
#
# Steps, each with a `timeout` that keeps what it wrote:
# 1. nvidia-smi: the GPU and its driver (gpu3-nvidia-smi.txt).
# 2. python -m swa_tutorial.bench.triton_check: the kernel against float64 dense attention, grouped
#    heads, softcap, every window form, padding, strided inputs, float64/32/16 and bfloat16,
#    outputs, lse and gradients (gpu3-triton-check.json).
# 3. python -m swa_tutorial.bench.triton_entry_check: sliding_window_attention(backend="triton")
#    against backend="dense" in float64: int, (left, right), causal and unbounded windows,
#    dilation, padding, grouped heads, end-aligned queries (Lq < Lk, Lq = 1, Lq > Lk), softcap,
#    sinks, packed sequences, outputs and gradients (sinks' too), four dtypes
#    (gpu3-entry-check.json).
# 4. python -m swa_tutorial.bench.kernel_timing: bfloat16 forward and forward + backward at
#    L = 16K, 32K, 64K, the book's shape (B = 1, H = 12, d = 64, window (256, 256)) and Mistral's
#    (H = 32, H_kv = 8, d = 128, window (4095, 0)): the kernel, FlexAttention (compiled, block
#    mask built before the timing), SDPA flash without a window, SDPA with the band mask; CUDA
#    events, median and IQR, useful TFLOP/s against the measured matmul peak
#    (kernel-timing-book.json, kernel-timing-mistral.json).
#
# How long: estimated from FLOP counts first, then measured once on an H200 (torch 2.11, Triton
# 3.6). The timed work is small: useful forward FLOPs are 4 B H N d with N the pairs in the
# window, the book's shape 2.6e10 at 16K to 1.0e11 at 64K, Mistral's 9.6e11 to 4.3e12, 0.3 ms to
# 13 ms a call at 100-350 TFLOP/s (three times the FLOPs with the backward). The dense points
# cost more: SDPA with the band mask does all L^2 cells, 0.25 s for Mistral's forward at 64K and
# 0.87 s with the backward. Compilation dominates: measured, the check took 8-30 s a case (most of
# it compiling the kernel's specializations), so its 42 cases want about 6 minutes, the entry
# check (32 cases) 2-4, and the timing step (FlexAttention compiled for two shapes and both
# passes) about 5. Where one command may run 10 minutes, run STEPS="check" first, then
# STEPS="entry timing"; the timeouts (CHECK_S, ENTRY_S, TIMING_S seconds: 420, 240, 360 unless
# set) keep what each step wrote by then.
set -u
OUT=${1:?usage: bash book/data/gpu-run-3.sh OUTPUT_DIR [--cpu-trial]}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
PYTHON=${PYTHON:-python3}
if [ "${2:-}" = "--cpu-trial" ]; then
  export TRITON_INTERPRET=1
  DEVICE="--device cpu --tiny" CHECK_S=300 ENTRY_S=300 TIMING_S=400 TIMING="--budget 0.05"
else
  DEVICE="--device cuda" CHECK_S=${CHECK_S:-420} ENTRY_S=${ENTRY_S:-240} TIMING_S=${TIMING_S:-360} TIMING="--budget 0.3"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu3-nvidia-smi.txt"
fi
STEPS=" ${STEPS:-check entry timing} "
if [[ $STEPS == *" check "* ]]; then
  timeout $CHECK_S $PYTHON -m swa_tutorial.bench.triton_check $DEVICE --max-seconds $((CHECK_S - 60)) \
    --commit "$COMMIT" --out "$OUT/gpu3-triton-check.json"
fi
if [[ $STEPS == *" entry "* ]]; then
  timeout $ENTRY_S $PYTHON -m swa_tutorial.bench.triton_entry_check $DEVICE --max-seconds $((ENTRY_S - 40)) \
    --commit "$COMMIT" --out "$OUT/gpu3-entry-check.json"
fi
if [[ $STEPS == *" timing "* ]]; then
  timeout $TIMING_S $PYTHON -m swa_tutorial.bench.kernel_timing $DEVICE $TIMING --commit "$COMMIT" --out "$OUT"
fi
