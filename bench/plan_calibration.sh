#!/usr/bin/env bash
# Own-run check of `mics plan`: measure the host's rails with `mics bench --json`, train two
# sharded layouts (and DDP) of one model on emulated nodes, calibrate the cost model on one run
# and predict the others; then the other way round. Results go in docs/PLANNING.md.
#   bench/plan_calibration.sh [BUILD_DIR] [OUT_DIR]
# Timings on a small shared host are noisy: the script uses 20 steps and the median step.
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$(mktemp -d /tmp/mics-plan-cal.XXXXXX)}
MICS=$BUILD/mics
export MICS_DATA_DIR=${MICS_DATA_DIR:-$OUT/data} MICS_TIMEOUT_S=${MICS_TIMEOUT_S:-120}
mkdir -p "$OUT"
MODEL=${MODEL:-L4H4C128V256T64}
COMMON="--model $MODEL --seq-len 64 --steps ${STEPS:-20} --samples 0 --eval-batches 1"

"$MICS" launch -n 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_intra.json" >/dev/null
"$MICS" launch -n 4 --nodes 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_inter.json" >/dev/null
HOST="host:$OUT/bench_intra.json,$OUT/bench_inter.json"

"$MICS" train -n 4 --nodes 2 $COMMON --strategy mics --partition-size 2 --micro-batch 4 --grad-accum 2 --out "$OUT/mics_p2" >"$OUT/mics_p2.log" 2>&1
"$MICS" train -n 4 --nodes 2 $COMMON --strategy zero3 --micro-batch 4 --grad-accum 4 --out "$OUT/zero3" >"$OUT/zero3.log" 2>&1
"$MICS" train -n 4 --nodes 2 $COMMON --strategy ddp --micro-batch 8 --grad-accum 1 --out "$OUT/ddp" >"$OUT/ddp.log" 2>&1

for fit in mics_p2 zero3 ddp; do
  checks=""
  for other in mics_p2 zero3 ddp; do [ "$other" = "$fit" ] || checks="$checks --check $OUT/$other"; done
  echo "== calibrated on $fit"
  "$MICS" plan --calibrate "$OUT/$fit" --cluster "$HOST" $checks
done
echo "runs in $OUT"
