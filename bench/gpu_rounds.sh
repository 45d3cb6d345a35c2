#!/usr/bin/env bash
# Interleaved rounds on one GPU: each round runs every mics variant (environment settings, e.g. an
# A/B of a knob) and then, when given, llm.c; torch.compile once after the rounds. A slow minute
# of a shared machine then hits one round of every system, not one system; the summary gives
# each system's mean and best round and the ratios. This is how docs/PERFORMANCE.md's side-by-side
# tables were taken (bench/results/gpu-*/command_*.sh are the calls that ran).
#
#   bench/gpu_rounds.sh OUT_DIR
# Environment:
#   MICS      the mics binary (default: /tmp/mics-gpu-build/mics, bench/gpu.sh's, else build/mics)
#   VARIANTS  mics variants separated by '|', each a space-separated list of VAR=value ('-': as
#             is), e.g. 'MICS_CUDA_OVERLAP_WGRAD=0|MICS_CUDA_OVERLAP_WGRAD=1' (default '-')
#   ROUNDS (3), STEPS (30), MODEL (gpt2-124m), BATCH (16), SEQ (1024), DEVICE (cuda)
#   DATA      token shards for --data (default: random tokens written to OUT_DIR/data by
#             bench/peers/make_llmc_data.py, as the anchors)
#   LLMC_DIR + LLMC_FRONTEND  a karpathy/llm.c checkout and cudnn-frontend's include/: llm.c in
#             every round (bench/peers/llmc.sh; GPT-2 124M/350M/774M only)
#   TORCH=1   PyTorch torch.compile once after the rounds (bench/peers/torch_gpt2.py)
# Writes OUT_DIR/rounds.tsv (round, system, variant, tokens/s, step ms), each run's output
# (mics_r<round>_v<variant>.txt, llmc_r<round>/, torch.txt) and summary.md.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: $0 OUT_DIR (settings in the environment: see the top of $0)}
if [ -z "${MICS:-}" ]; then
  MICS=/tmp/mics-gpu-build/mics
  [ -x "$MICS" ] || MICS=$SRC/build/mics
fi
[ -x "$MICS" ] || { echo "gpu_rounds.sh: no mics binary at $MICS (set MICS=, or build: make build / bench/gpu.sh)" >&2; exit 2; }
ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-30} MODEL=${MODEL:-gpt2-124m} BATCH=${BATCH:-16} SEQ=${SEQ:-1024}
DEVICE=${DEVICE:-cuda}
case "$ROUNDS$STEPS$BATCH$SEQ" in *[!0-9]*) echo "gpu_rounds.sh: ROUNDS, STEPS, BATCH and SEQ must be numbers" >&2; exit 2 ;; esac
[ "$STEPS" -ge 5 ] || { echo "gpu_rounds.sh: STEPS must be at least 5 (tokens/s is over steps 4..)" >&2; exit 2; }
IFS='|' read -r -a VARIANT_LIST <<< "${VARIANTS:--}"
export NCCL_NVLS_ENABLE=0
mkdir -p "$OUT"

DATA=${DATA:-}
if [ -z "$DATA" ]; then
  mkdir -p "$OUT/data"
  [ -f "$OUT/data/rand_train.bin" ] || python3 "$SRC/bench/peers/make_llmc_data.py" "$OUT/data" 4000000 > /dev/null ||
    { echo "gpu_rounds.sh: could not write random tokens (needs python3 with numpy), or set DATA=" >&2; exit 2; }
  DATA=$OUT/data/rand_train.bin
fi

# llm.c's depth for the model, and torch_gpt2.py's L H C
case "$MODEL" in
  gpt2-124m) depth=d12 torch_shape="12 12 768" ;;
  gpt2-350m) depth=d24 torch_shape="24 16 1024" ;;
  gpt2-774m) depth=d36 torch_shape="36 20 1280" ;;
  *) depth="" torch_shape="" ;;
esac
if [ "${TORCH:-0}" = 1 ] && { [ -z "$torch_shape" ] || [ "$SEQ" != 1024 ]; }; then
  echo "gpu_rounds.sh: torch_gpt2.py runs GPT-2 124M, 350M or 774M at SEQ=1024 only" >&2
  exit 2
fi
llmc=0
if [ -n "${LLMC_DIR:-}" ]; then
  [ -n "$depth" ] || { echo "gpu_rounds.sh: llm.c runs GPT-2 124M, 350M or 774M only, not $MODEL" >&2; exit 2; }
  [ "$SEQ" = 1024 ] || { echo "gpu_rounds.sh: llm.c runs at SEQ=1024 only" >&2; exit 2; }
  llmc_data=$(dirname "$DATA")
  [ -f "$llmc_data/rand_val.bin" ] || { echo "gpu_rounds.sh: llm.c needs rand_train.bin and rand_val.bin beside each other (DATA=)" >&2; exit 2; }
  export LLMC_WORK=${LLMC_WORK:-$OUT/llmc-work}
  bash "$SRC/bench/peers/llmc.sh" "$LLMC_DIR" "${LLMC_FRONTEND:?set LLMC_FRONTEND to cudnn-frontend/include}" \
    "$llmc_data" "$OUT/llmc_build" none > "$OUT/llmc_build.txt" 2>&1 ||
    { echo "gpu_rounds.sh: llm.c did not build: $OUT/llmc_build.txt" >&2; exit 1; }
  llmc=1
fi

args=(train --device "$DEVICE" --model "$MODEL" --micro-batch "$BATCH" --seq-len "$SEQ" --data "$DATA"
  --steps "$STEPS" --lr 6e-4 --weight-decay 0.1 --clip 1.0 --samples 0 --eval-batches 2 --log-every 10)
printf 'round\tsystem\tvariant\ttokens_s\tstep_ms\n' > "$OUT/rounds.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
  for k in "${!VARIANT_LIST[@]}"; do
    v=${VARIANT_LIST[$k]}
    settings=()
    [ "$v" = "-" ] || read -r -a settings <<< "$v"
    log=$OUT/mics_r${r}_v$k.txt
    if ! env "${settings[@]}" "$MICS" "${args[@]}" > "$log" 2>&1; then
      echo "gpu_rounds.sh: mics failed in round $r, variant '$v': $(tail -3 "$log" | tr '\n' ' ')" >&2
      exit 1
    fi
    tps=$(awk '/^ *tokens\/s /{print $2; exit}' "$log")
    ms=$(awk '/^ *step time /{print $3; exit}' "$log")
    [ -n "$tps" ] || { echo "gpu_rounds.sh: mics gave no tokens/s in round $r, variant '$v': $log" >&2; exit 1; }
    printf '%s\tmics\t%s\t%s\t%s\n' "$r" "$v" "$tps" "${ms:--}" >> "$OUT/rounds.tsv"
    echo "round $r mics [$v]: $tps tokens/s${ms:+, $ms ms}"
  done
  if [ $llmc = 1 ]; then
    bash "$SRC/bench/peers/llmc.sh" "$LLMC_DIR" "$LLMC_FRONTEND" "$llmc_data" "$OUT/llmc_r$r" "$depth:$BATCH" \
      > "$OUT/llmc_r$r.log" 2>&1
    # "llm.c d12 B=16 T=1024: 32.08 ms/step, 510,711 tok/s (steps 4..30, mean)"
    line=$(tail -1 "$OUT/llmc_r$r/llmc_summary.txt" 2>/dev/null)
    ms=$(sed -nE 's/.*: ([0-9.]+) ms\/step.*/\1/p' <<< "$line")
    tps=$(sed -nE 's/.* ([0-9,]+) tok\/s.*/\1/p' <<< "$line" | tr -d ,)
    [ -n "$tps" ] || { echo "gpu_rounds.sh: llm.c gave no figure in round $r: $OUT/llmc_r$r.log" >&2; exit 1; }
    printf '%s\tllm.c\t-\t%s\t%s\n' "$r" "$tps" "$ms" >> "$OUT/rounds.tsv"
    echo "round $r llm.c: $tps tokens/s, $ms ms"
  fi
done
if [ "${TORCH:-0}" = 1 ]; then
  # shellcheck disable=SC2086  # L H C as three arguments
  PYTHONUNBUFFERED=1 python3 "$SRC/bench/peers/torch_gpt2.py" "$BATCH" 1 $torch_shape > "$OUT/torch.txt" 2>&1
  line=$(grep -E "tok/s=" "$OUT/torch.txt" | tail -1)
  tps=$(sed -nE 's/.*tok\/s=([0-9,]+).*/\1/p' <<< "$line" | tr -d ,)
  ms=$(sed -nE 's/.*step=([0-9.]+)ms.*/\1/p' <<< "$line")
  [ -n "$tps" ] || { echo "gpu_rounds.sh: torch.compile gave no figure: $OUT/torch.txt" >&2; exit 1; }
  printf '0\ttorch.compile\t-\t%s\t%s\n' "$tps" "$ms" >> "$OUT/rounds.tsv"
  echo "torch.compile: $tps tokens/s, $ms ms"
fi

python3 - "$OUT/rounds.tsv" "$MODEL" "$BATCH" "$SEQ" "$DEVICE" > "$OUT/summary.md" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
model, batch, seq, device = sys.argv[2:6]
systems = {}
for r in rows:
    systems.setdefault((r["system"], r["variant"]), []).append(float(r["tokens_s"]))
print(f"# {model}, micro-batch {batch}, T={seq}, --device {device}: tokens/s by round\n")
print("| system | variant | rounds | mean | best |")
print("|---|---|---|---|---|")
for (name, variant), v in systems.items():
    print(f"| {name} | {variant} | {' / '.join(f'{x:,.0f}' for x in v)} | {sum(v)/len(v):,.0f} | {max(v):,.0f} |")
base = [k for k in systems if k[0] == "mics"]
peers = [k for k in systems if k[0] != "mics"]
if base and (len(base) > 1 or peers):
    print("\nRatios (mean against mean, best against best):\n")
    for b in base:
        mb, xb = sum(systems[b]) / len(systems[b]), max(systems[b])
        for o in base[:1] + peers:
            if o == b:
                continue
            mo, xo = sum(systems[o]) / len(systems[o]), max(systems[o])
            label = o[0] if o[0] != "mics" else f"mics [{o[1]}]"
            print(f"- mics [{b[1]}] / {label}: {mb / mo:.3f} (means), {xb / xo:.3f} (best rounds)")
EOF
cat "$OUT/summary.md"
