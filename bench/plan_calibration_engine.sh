#!/usr/bin/env bash
# Own-run check of `mics plan` on the engine bench (the sibling of plan_calibration.sh, which
# does the same with `mics train`): measure the host's rails with `mics bench --json`, run
# `mics engine-bench` (the MLP stack through the sharded engine) in three layouts on emulated
# nodes, calibrate the cost model on each layout's best round and predict the others (and the
# same within each round). Results go in docs/PLANNING.md ("Against our own runs").
#   bench/plan_calibration_engine.sh [BUILD_DIR] [OUT_DIR]
# Env: ROUNDS (default 5; the layouts run interleaved, round by round, so that a change in the
# host's load hits every layout alike), STEPS (30 timed steps after the bench's warm-up step),
# QUANTILE (0.25: the step time compared is this quantile of a run's steps), LAYERS and WIDTH (8 x 384: the MLP's plain loops make a step of
# 100-300 ms on this host, so that compute is not negligible against communication), LAYOUTS.
# The host's load (uptime, /proc/pressure/cpu) is logged before every run in OUT/load.txt:
# on a shared host it is the main source of error, so run it under `nice -n -20`; the first round
# waits for a settled host (IDLE_LOAD, default 1-minute load 1.0; IDLE_WAIT_S, default 300 s).
# CALIBRATE_ONLY=1 with an OUT_DIR of earlier runs: only the calibration table, with this build.
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$(mktemp -d /tmp/mics-plan-cal-engine.XXXXXX)}
MICS=$BUILD/mics
export MICS_TIMEOUT_S=${MICS_TIMEOUT_S:-120}
mkdir -p "$OUT"
ROUNDS=${ROUNDS:-5}
COMMON="--layers ${LAYERS:-8} --width ${WIDTH:-384} --steps ${STEPS:-30}"
# 4 ranks on 2 emulated nodes, 16 samples per rank and optimizer step in every layout: three
# strategies, and each sharded strategy also with the other split of S and B (same strategy,
# another configuration).
LAYOUTS=${LAYOUTS:-"mics_p2 mics_p2_s4 zero3 zero3_s2 ddp"}

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

# shellcheck source=bench/plan_calibration_common.sh
. "$(dirname "$0")/plan_calibration_common.sh"
if [ "${CALIBRATE_ONLY:-0}" != 1 ]; then
  wait_for_idle
  for round in $(seq 1 "$ROUNDS"); do
    measure_rails_round "$round"
    mkdir -p "$OUT/r$round"
    for l in $LAYOUTS; do
      load "round $round $l"
      # shellcheck disable=SC2046
      "$MICS" launch -n 4 --nodes 2 -- "$MICS" engine-bench $COMMON $(flags "$l") --json "$OUT/r$round/$l.json" \
        >"$OUT/r$round.$l.log" 2>&1
    done
  done
  load end
fi
rails_done

calibrate_all .json
cat "$OUT/load.txt" 2>/dev/null || true
echo "runs in $OUT"
