#!/usr/bin/env bash
# The GPU path in one go, on a machine with an NVIDIA GPU: build (CUDA on, sm_90), the CUDA
# tests, `mics train --device cuda` on GPT-2 124M (B=16, T=1024, random tokens), a profiled
# run with a per-kernel-kind time breakdown (CUDA events), and the PyTorch peer in the same run.
# The attention is cuDNN's fused SDPA where the build finds cuDNN (MICS_CUDA_CUDNN_ATTENTION=0:
# mics' own fused kernels); summary.txt names the one used.
#
#   bench/gpu.sh [OUT_DIR]          (default: ./gpu-results)
# Environment: BUILD (build dir, default /tmp/mics-gpu-build), MICS_FABRIC_PREFIX (an unpacked
# libfabric-dev, or FABRIC_DEB: a libfabric-dev .deb to unpack there), STEPS (30), SKIP_PEERS=1,
# SKIP_TESTS=1, JOBS (16), NOFLASH=1 (also a profiled run with MICS_CUDA_FLASH=0: the GEMM
# attention, into mics_profile_noflash.txt), LARGE=1 (also GPT-2 350M and 774M at B=8 for mics and
# PyTorch: mics_350m.txt, torch_350m.txt, ...), LLMC_DIR + LLMC_FRONTEND (a karpathy/llm.c checkout
# and NVIDIA/cudnn-frontend's include/: the llm.c peer in the same run, bench/peers/llmc.sh; with
# LARGE=1 also its d24/d36).
# Writes: env.txt, build.log, tests.txt, mics_train.txt, mics_profile.txt, torch.txt, summary.txt.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-${OUT:-$PWD/gpu-results}}
BUILD=${BUILD:-/tmp/mics-gpu-build}
STEPS=${STEPS:-30}
JOBS=${JOBS:-16}
export NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  nvcc --version | tail -2
  python3 -c 'import torch; print("torch", torch.__version__)' 2>&1
} > "$OUT/env.txt"

echo "== build"
JOBS=$JOBS bash "$SRC/bench/gpu_build.sh" "$BUILD" mics model_cuda_test
status=$?
cp "$BUILD/build.log" "$OUT/build.log" 2> /dev/null
[ $status -eq 0 ] || { echo "build failed (see build.log)"; exit 1; }

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== tests"
  "$BUILD/tests/model_cuda_test" 2>&1 | tee "$OUT/tests.txt" | grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |Failure|error|Expected|Which is|seed|worst|\] loss" | head -80
fi

echo "== data"
DATA=/tmp/mics-gpu-data
mkdir -p "$DATA"
[ -f "$DATA/rand_train.bin" ] || python3 "$SRC/bench/peers/make_llmc_data.py" "$DATA" 4000000

shared=(--device cuda --seq-len 1024 --data "$DATA/rand_train.bin" --lr 6e-4 --weight-decay 0.1 --clip 1.0
        --samples 0 --eval-batches 2 --log-every 5)
common=(--model gpt2-124m --micro-batch 16 "${shared[@]}")
echo "== mics train --device cuda ($STEPS steps)"
"$BUILD/mics" train "${common[@]}" --steps "$STEPS" --metrics "$OUT/mics_metrics.jsonl" 2>&1 | tee "$OUT/mics_train.txt" | tail -22
echo "== mics train, profiled (per-kernel-kind CUDA event times; events add a little time)"
MICS_CUDA_PROFILE=1 "$BUILD/mics" train "${common[@]}" --steps 8 > "$OUT/mics_profile.txt" 2>&1
sed -n '/kernel time per step/,$p' "$OUT/mics_profile.txt"
if [ "${NOFLASH:-0}" = 1 ]; then
  echo "== mics train, profiled, MICS_CUDA_FLASH=0 (GEMM + softmax attention)"
  MICS_CUDA_FLASH=0 MICS_CUDA_PROFILE=1 "$BUILD/mics" train "${common[@]}" --steps 8 > "$OUT/mics_profile_noflash.txt" 2>&1
  grep -E "^  (tokens/s|step time) " "$OUT/mics_profile_noflash.txt"
fi

if [ "${SKIP_PEERS:-0}" != 1 ]; then
  echo "== PyTorch peer (torch.compile, SDPA, fused AdamW), B=16"
  PYTHONUNBUFFERED=1 python3 "$SRC/bench/peers/torch_gpt2.py" 16 1 2>&1 | tail -3 | tee "$OUT/torch.txt"
fi

if [ "${LARGE:-0}" = 1 ]; then
  # name, mics preset, torch L H C; micro-batch 8 as the anchors' table
  for spec in "350m gpt2-350m 24 16 1024" "774m gpt2-774m 36 20 1280"; do
    read -r name preset layers heads width <<< "$spec"
    echo "== mics train --device cuda, GPT-2 $name, B=8"
    "$BUILD/mics" train "${shared[@]}" --model "$preset" --micro-batch 8 --steps 20 \
      > "$OUT/mics_$name.txt" 2>&1
    grep -E "^  (tokens/s|step time|model flops|device memory) " "$OUT/mics_$name.txt"
    if [ "${SKIP_PEERS:-0}" != 1 ]; then
      echo "== PyTorch peer, GPT-2 $name, B=8"
      PYTHONUNBUFFERED=1 python3 "$SRC/bench/peers/torch_gpt2.py" 8 1 "$layers" "$heads" "$width" 2>&1 | tail -3 \
        | tee "$OUT/torch_$name.txt"
    fi
  done
fi

if [ -n "${LLMC_DIR:-}" ] && [ "${SKIP_PEERS:-0}" != 1 ]; then
  echo "== llm.c peer (cuDNN attention)"
  runs=(d12:16)
  [ "${LARGE:-0}" = 1 ] && runs+=(d24:8 d36:8)
  bash "$SRC/bench/peers/llmc.sh" "$LLMC_DIR" "${LLMC_FRONTEND:?set LLMC_FRONTEND to cudnn-frontend/include}" \
    "$DATA" "$OUT" "${runs[@]}"
fi

{
  echo "GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
  grep -oE "attention: .*" "$OUT/mics_train.txt" | head -1 | sed 's/^/mics /'
  grep -E "^  (tokens/s|step time|model flops|device memory)" "$OUT/mics_train.txt" | sed 's/^/mics: /'
  if [ -f "$OUT/torch.txt" ]; then grep -E "tok/s" "$OUT/torch.txt" | sed 's/^/peer: /'; fi
  for name in 350m 774m; do
    [ -f "$OUT/mics_$name.txt" ] && grep -E "^  (tokens/s|model flops) " "$OUT/mics_$name.txt" | sed "s/^/mics $name: /"
    [ -f "$OUT/torch_$name.txt" ] && grep -E "tok/s" "$OUT/torch_$name.txt" | sed 's/^/peer: /'
  done
  [ -f "$OUT/llmc_summary.txt" ] && sed 's/^/peer: /' "$OUT/llmc_summary.txt"
} | tee "$OUT/summary.txt"
if grep -q "FAILED" "$OUT/tests.txt" 2>/dev/null; then echo "some CUDA tests FAILED (tests.txt)"; exit 1; fi
exit 0
