#!/usr/bin/env bash
# CPU training speed of `mics train` (1 rank, one node, every core) beside the machine's sgemm
# FLOP rate through the same OpenBLAS, measured in the same run. For docs/PERFORMANCE.md.
#   bench/cpu_train.sh [build dir] [out dir]
# Knobs: STEPS_TINY (50), STEPS_124M (4), B_124M (1), T_124M (1024).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${1:-$root/build}
out=${2:-$root/out/cpu-train}
mkdir -p "$out"
"$here/peers/build.sh" "$build/peers" > /dev/null
threads=$(nproc)
echo "== sgemm 2048^3, $threads threads (OpenBLAS)"
"$build/peers/sgemm_rate" 2048 "$threads" 5 | tee "$out/sgemm.json"
run() {  # name, then mics train flags
  local name=$1
  shift
  echo "== mics train $name: $*"
  "$build/mics" train --samples 0 --eval-batches 1 --log-every 1000 --metrics "$out/$name.jsonl" "$@" | tail -16
}
run tiny --model tiny --steps "${STEPS_TINY:-50}" --micro-batch 8
run gpt2-124m --model gpt2-124m --steps "${STEPS_124M:-4}" --micro-batch "${B_124M:-1}" --seq-len "${T_124M:-1024}"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
peak = json.load(open(f"{out}/sgemm.json"))["gflops"]
print(f"\n| model | B x T | tokens/s per rank | GFLOP/s (6N + 6LCT per token) | share of sgemm {peak:.1f} GFLOP/s |")
print("|---|---|---|---|---|")
for name in ("tiny", "gpt2-124m"):
    s = [json.loads(l) for l in open(f"{out}/{name}.jsonl") if '"summary"' in l][0]
    gflops = s["tokens_per_s"] * s["flops_per_token"] / 1e9
    print(f"| {name} | {s['micro_batch']} x {s['seq_len']} | {s['tokens_per_s']:.0f} | {gflops:.1f} | {100 * gflops / peak:.0f}% |")
PY
