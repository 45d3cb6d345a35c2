#!/usr/bin/env bash
# The llm.c peer (karpathy/llm.c, train_gpt2cu with cuDNN attention) on one GPU, built and run
# the way ../shared/anchors/README.md took its figures, so that bench/gpu.sh can measure it in
# the same run as mics and PyTorch. llm.c is not part of mics: bring a checkout yourself.
#
#   bench/peers/llmc.sh LLMC_DIR FRONTEND_INCLUDE DATA_DIR OUT_DIR [MODEL:BATCH ...]
#     LLMC_DIR          a checkout of karpathy/llm.c (the anchors used f1e2ace); it is copied,
#                       the copy patched and built, the checkout left as it is
#     FRONTEND_INCLUDE  NVIDIA/cudnn-frontend's include/ folder (header-only)
#     DATA_DIR          holds rand_train.bin and rand_val.bin (bench/peers/make_llmc_data.py)
#     MODEL:BATCH       llm.c depth and micro-batch, default "d12:16 d24:8 d36:8"
#                       (GPT-2 124M, 350M, 774M), each at T=1024, 30 steps; "none": build only
# LLMC_WORK=DIR keeps the built copy there for the next call. Writes OUT_DIR/llmc_build.log,
# llmc_<model>_b<B>.txt (the run) and llmc_summary.txt (one line per run: the mean of steps
# 4..30 as llm.c prints them, ms per step and tokens/s).
set -uo pipefail
if [ $# -lt 4 ]; then
  sed -n '5,16p' "$0" >&2
  exit 2
fi
LLMC=$1 FRONTEND=$2 DATA=$3 OUT=$4
shift 4
RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=(d12:16 d24:8 d36:8)
for f in "$LLMC/train_gpt2.cu" "$FRONTEND/cudnn_frontend.h" "$DATA/rand_train.bin" "$DATA/rand_val.bin"; do
  [ -e "$f" ] || { echo "llmc.sh: $f not found (see the usage at the top of $0)" >&2; exit 2; }
done
mkdir -p "$OUT"
# LLMC_WORK: keep the patched, built copy there and reuse it on the next call (else a temp dir).
work=${LLMC_WORK:-$(mktemp -d /tmp/llmc.XXXXXX)}
if [ -x "$work/train_gpt2cu" ]; then
  echo "== reusing $work/train_gpt2cu"
else
mkdir -p "$work"
cp -r "$LLMC/." "$work/"
# llm.c's Makefile only builds with cuDNN when it sees ./cudnn-frontend/include
[ -d "$work/cudnn-frontend/include" ] || { mkdir -p "$work/cudnn-frontend" && ln -s "$(cd "$FRONTEND" && pwd)" "$work/cudnn-frontend/include"; }
# CUDA 13 changed cudaMemAdvise's signature; the anchors' build deleted llm.c's managed-memory
# fallback (only used when the model does not fit, which it does here).
python3 - "$work/llmc/cuda_utils.cuh" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
patched = re.sub(r"if\(err == cudaErrorMemoryAllocation\) \{.*?\} else \{\s*cudaCheck_\(err, file, line\);\s*return 0;\s*\}",
                 "cudaCheck_(err, file, line);\n    return 0;", text, flags=re.S)
if patched == text:
    sys.exit("llmc.sh: could not find the managed-memory fallback in " + path + " (another llm.c version?)")
open(path, "w").write(patched)
EOF
[ $? -eq 0 ] || exit 1
echo "== building llm.c train_gpt2cu (cuDNN attention)"
if ! make -C "$work" train_gpt2cu USE_CUDNN=1 NO_MULTI_GPU=1 CUDNN_FRONTEND_PATH="$FRONTEND" \
    NVCC_LDLIBS="-lcublas -lcublasLt -lnvidia-ml -lcudnn -lnvrtc -lcuda" > "$OUT/llmc_build.log" 2>&1; then
  tail -20 "$OUT/llmc_build.log"
  echo "llmc.sh: build failed (llmc_build.log)" >&2
  exit 1
fi
fi
: > "$OUT/llmc_summary.txt"
for run in "${RUNS[@]}"; do
  [ "$run" = none ] && continue
  model=${run%%:*} batch=${run##*:}
  log="$OUT/llmc_${model}_b${batch}.txt"
  echo "== llm.c $model B=$batch T=1024"
  (cd "$work" && ./train_gpt2cu -i "$DATA/rand_train.bin" -j "$DATA/rand_val.bin" -e "$model" -b "$batch" \
     -t 1024 -x 30 -v 100000 -s 0 -r 0) > "$log" 2>&1
  status=$?
  # llm.c's step line: "step N/30 | loss ... | 33.91 ms | 38.7% bf16 MFU | 483276 tok/s"
  python3 - "$log" "$model" "$batch" "$status" >> "$OUT/llmc_summary.txt" <<'EOF'
import re, sys
log, model, batch, status = sys.argv[1:5]
ms = []
for line in open(log, errors="replace"):
    m = re.match(r"step\s+(\d+)/\d+ \|.*\|\s*([\d.]+) ms \|", line)
    if m and int(m.group(1)) >= 4:
        ms.append(float(m.group(2)))
if not ms:
    print(f"llm.c {model} B={batch}: no step lines (exit {status}; see {log})")
else:
    mean = sum(ms) / len(ms)
    print(f"llm.c {model} B={batch} T=1024: {mean:.2f} ms/step, {int(batch) * 1024 / mean * 1e3:,.0f} tok/s "
          f"(steps 4..{3 + len(ms)}, mean)")
EOF
  tail -1 "$OUT/llmc_summary.txt"
done
[ -n "${LLMC_WORK:-}" ] || rm -rf "$work"
