#!/bin/bash
# The runs in this folder (2026-12-01, 17:14-17:50 UTC, this project's 2-core VM, build of commit
# 67bcb84; the planner's code is unchanged since): e7 alone on an idle host
#   nice -n -20 bench/plan_calibration_engine.sh build OUT/e7
# then, a minute's pause before each run (the pause the scripts now take themselves, wait_for_idle):
cd /work/main
for i in 8 9 10 11; do
  sleep 60
  nice -n -20 bench/plan_calibration_engine.sh build OUT/e$i
  if [ $i -le 10 ]; then
    sleep 60
    nice -n -20 bench/plan_calibration.sh build OUT/t$i
  fi
done
# Tables again from the kept runs: CALIBRATE_ONLY=1 bench/plan_calibration_engine.sh build THIS_DIR/e8
