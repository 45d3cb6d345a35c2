#!/usr/bin/env bash
# Own-run check of `mics plan`: measure the host's rails with `mics bench --json`, train three
# layouts of one model (MiCS p=2, ZeRO-3, DDP) on emulated nodes, calibrate the cost model on
# each run and predict every other layout's run of the same round. Results go in
# docs/PLANNING.md ("Against our own runs").
#   bench/plan_calibration.sh [BUILD_DIR] [OUT_DIR]
# Env: ROUNDS (default 2; the layouts run interleaved, round by round, so that a change in the
# host's load hits every layout alike), STEPS (40; the median step, the first left out: a ZeRO-3 run can switch between two step times for many steps).
# The host's load (uptime, /proc/pressure/cpu) is logged before every run in OUT/load.txt:
# on a shared host it is the main source of error, so run it under `nice -n -20`.
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$(mktemp -d /tmp/mics-plan-cal.XXXXXX)}
MICS=$BUILD/mics
export MICS_DATA_DIR=${MICS_DATA_DIR:-$OUT/data} MICS_TIMEOUT_S=${MICS_TIMEOUT_S:-120}
mkdir -p "$OUT"
MODEL=${MODEL:-L4H4C128V256T64}
ROUNDS=${ROUNDS:-2}
COMMON="--model $MODEL --seq-len 64 --steps ${STEPS:-40} --samples 0 --eval-batches 1"
LAYOUTS="mics_p2 zero3 ddp"

load() {
  echo "$1: $(uptime | sed 's/.*load average/load average/'); cpu pressure $(head -1 /proc/pressure/cpu 2>/dev/null || echo n/a)" >>"$OUT/load.txt"
}
flags() {
  case $1 in
    mics_p2) echo "--strategy mics --partition-size 2 --micro-batch 4 --grad-accum 2" ;;
    zero3) echo "--strategy zero3 --micro-batch 4 --grad-accum 4" ;;
    ddp) echo "--strategy ddp --micro-batch 8 --grad-accum 1" ;;
  esac
}

load bench
"$MICS" launch -n 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_intra.json" >/dev/null
"$MICS" launch -n 4 --nodes 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_inter.json" >/dev/null
HOST="host:$OUT/bench_intra.json,$OUT/bench_inter.json"

for round in $(seq 1 "$ROUNDS"); do
  for l in $LAYOUTS; do
    load "round $round $l"
    # shellcheck disable=SC2046
    "$MICS" train -n 4 --nodes 2 $COMMON $(flags "$l") --out "$OUT/r$round/$l" >"$OUT/r$round.$l.log" 2>&1
  done
done
load end

# One line per (round, calibrated on, predicted): the check's error in percent.
echo "round fit predicted predicted_ms measured_ms error_pct" >"$OUT/table.txt"
for round in $(seq 1 "$ROUNDS"); do
  for fit in $LAYOUTS; do
    checks=""
    for other in $LAYOUTS; do [ "$other" = "$fit" ] || checks="$checks --check $OUT/r$round/$other"; done
    echo "== round $round, calibrated on $fit"
    # shellcheck disable=SC2086
    "$MICS" plan --calibrate "$OUT/r$round/$fit" --cluster "$HOST" $checks | tee "$OUT/r$round.fit_$fit.txt"
    # shellcheck disable=SC2086
    "$MICS" plan --calibrate "$OUT/r$round/$fit" --cluster "$HOST" $checks --json |
      jq -r --arg r "$round" --arg f "$fit" '.checks[] | [$r, $f, (.run | split("/")[-2]),
        (.predicted_step_s * 1e3 | round), (.measured_step_s * 1e3 | round), (.error * 1000 | round / 10)] | @tsv' \
        >>"$OUT/table.txt"
  done
done
column -t "$OUT/table.txt"
cat "$OUT/load.txt"
echo "runs in $OUT"
