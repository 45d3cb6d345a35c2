#!/usr/bin/env bash
# Own-run check of `mics plan` on the engine bench (the sibling of plan_calibration.sh, which
# does the same with `mics train`): measure the host's rails with `mics bench --json`, run
# `mics engine-bench` (the MLP stack through the sharded engine) in three layouts on emulated
# nodes, calibrate the cost model on each run and predict every other layout's run of the same
# round. Results go in docs/PLANNING.md ("Against our own runs").
#   bench/plan_calibration_engine.sh [BUILD_DIR] [OUT_DIR]
# Env: ROUNDS (default 2; the layouts run interleaved, round by round, so that a change in the
# host's load hits every layout alike), STEPS (30 timed steps after the bench's warm-up step;
# the median is compared), LAYERS and WIDTH (8 x 384: the MLP's plain loops make a step of
# 100-300 ms on this host, so that compute is not negligible against communication), LAYOUTS.
# The host's load (uptime, /proc/pressure/cpu) is logged before every run in OUT/load.txt:
# on a shared host it is the main source of error, so run it under `nice -n -20`.
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$(mktemp -d /tmp/mics-plan-cal-engine.XXXXXX)}
MICS=$BUILD/mics
export MICS_TIMEOUT_S=${MICS_TIMEOUT_S:-120}
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-2}
COMMON="--layers ${LAYERS:-8} --width ${WIDTH:-384} --steps ${STEPS:-30}"
# 4 ranks on 2 emulated nodes, 16 samples per rank and optimizer step in every layout: three
# strategies, and each sharded strategy also with the other split of S and B (same strategy,
# another configuration).
LAYOUTS=${LAYOUTS:-"mics_p2 mics_p2_s4 zero3 zero3_s2 ddp"}

load() {
  echo "$1: $(uptime | sed 's/.*load average/load average/'); cpu pressure $(head -1 /proc/pressure/cpu 2>/dev/null || echo n/a)" >>"$OUT/load.txt"
}
flags() {
  case $1 in
    mics_p2) echo "--strategies mics:2 --batch 8 --accum 2" ;;
    mics_p2_s4) echo "--strategies mics:2 --batch 4 --accum 4" ;;
    zero3) echo "--strategies zero3 --batch 4 --accum 4" ;;
    zero3_s2) echo "--strategies zero3 --batch 8 --accum 2" ;;
    ddp) echo "--strategies ddp --batch 16 --accum 1" ;;
    *) echo "unknown layout $1" >&2; exit 2 ;;
  esac
}

load bench
"$MICS" launch -n 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_intra.json" >/dev/null
"$MICS" launch -n 4 --nodes 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_inter.json" >/dev/null
HOST="host:$OUT/bench_intra.json,$OUT/bench_inter.json"

for round in $(seq 1 "$ROUNDS"); do
  mkdir -p "$OUT/r$round"
  for l in $LAYOUTS; do
    load "round $round $l"
    # shellcheck disable=SC2046
    "$MICS" launch -n 4 --nodes 2 -- "$MICS" engine-bench $COMMON $(flags "$l") --json "$OUT/r$round/$l.json" \
      >"$OUT/r$round.$l.log" 2>&1
  done
done
load end

# One line per (round, calibrated on, predicted): the check's error in percent.
echo "round fit predicted predicted_ms measured_ms error_pct" >"$OUT/table.txt"
for round in $(seq 1 "$ROUNDS"); do
  for fit in $LAYOUTS; do
    checks=""
    for other in $LAYOUTS; do [ "$other" = "$fit" ] || checks="$checks --check $OUT/r$round/$other.json"; done
    echo "== round $round, calibrated on $fit"
    # shellcheck disable=SC2086
    "$MICS" plan --calibrate "$OUT/r$round/$fit.json" --cluster "$HOST" $checks | tee "$OUT/r$round.fit_$fit.txt"
    # shellcheck disable=SC2086
    "$MICS" plan --calibrate "$OUT/r$round/$fit.json" --cluster "$HOST" $checks --json |
      jq -r --arg r "$round" --arg f "$fit" '.checks[] | [$r, $f, (.run | split("/")[-1] | split(".json")[0]),
        (.predicted_step_s * 1e3 | round), (.measured_step_s * 1e3 | round), (.error * 1000 | round / 10)] | @tsv' \
        >>"$OUT/table.txt"
  done
done
column -t "$OUT/table.txt"
cat "$OUT/load.txt"
echo "runs in $OUT"
