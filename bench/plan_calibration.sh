#!/usr/bin/env bash
# Own-run check of `mics plan`: measure the host's rails with `mics bench --json`, train three
# layouts of one model (MiCS p=2, ZeRO-3, DDP) on emulated nodes, calibrate the cost model on
# each layout's best round and predict the others (and the same within each round). Results go
# in docs/PLANNING.md ("Against our own runs").
#   bench/plan_calibration.sh [BUILD_DIR] [OUT_DIR]
# Env: ROUNDS (default 5; the layouts run interleaved, round by round, so that a change in the
# host's load hits every layout alike), STEPS (40, the first left out: a run can switch between
# two step times for many steps), QUANTILE (0.25: the step time compared is this quantile of a
# run's steps; the headline table takes each layout's best round, see plan_calibration_common.sh).
# The host's load (uptime, /proc/pressure/cpu) is logged before every run in OUT/load.txt:
# on a shared host it is the main source of error, so run it under `nice -n -20`; the first round
# waits for a settled host (IDLE_LOAD, default 1-minute load 1.0; IDLE_WAIT_S, default 300 s).
# CALIBRATE_ONLY=1 with an OUT_DIR of earlier runs: only the calibration table, with this build.
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$(mktemp -d /tmp/mics-plan-cal.XXXXXX)}
MICS=$BUILD/mics
export MICS_DATA_DIR=${MICS_DATA_DIR:-$OUT/data} MICS_TIMEOUT_S=${MICS_TIMEOUT_S:-120}
mkdir -p "$OUT"
MODEL=${MODEL:-L4H4C128V256T64}
ROUNDS=${ROUNDS:-5}
COMMON="--model $MODEL --seq-len 64 --steps ${STEPS:-40} --samples 0 --eval-batches 1"
LAYOUTS="mics_p2 zero3 ddp"

flags() {
  case $1 in
    mics_p2) echo "--strategy mics --partition-size 2 --micro-batch 4 --grad-accum 2" ;;
    zero3) echo "--strategy zero3 --micro-batch 4 --grad-accum 4" ;;
    ddp) echo "--strategy ddp --micro-batch 8 --grad-accum 1" ;;
  esac
}

# shellcheck source=bench/plan_calibration_common.sh
. "$(dirname "$0")/plan_calibration_common.sh"
if [ "${CALIBRATE_ONLY:-0}" != 1 ]; then
  wait_for_idle
  for round in $(seq 1 "$ROUNDS"); do
    measure_rails_round "$round"
    for l in $LAYOUTS; do
      load "round $round $l"
      # shellcheck disable=SC2046
      "$MICS" train -n 4 --nodes 2 $COMMON $(flags "$l") --out "$OUT/r$round/$l" >"$OUT/r$round.$l.log" 2>&1
    done
  done
  load end
fi
rails_done

calibrate_all ""
cat "$OUT/load.txt" 2>/dev/null || true
echo "runs in $OUT"
