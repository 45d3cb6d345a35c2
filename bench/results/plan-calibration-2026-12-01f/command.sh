#!/bin/bash
# back to back, as 2026-12-01d's e1-e4 ran, now with the scripts' own wait for a settled host
cd /work/main
for r in f1 f2 f3; do
  echo "engine $r start $(date -u +%T)" >> OUT/progress
  nice -n -20 bench/plan_calibration_engine.sh build OUT/$r > OUT/$r.log 2>&1
  echo "engine $r done $(date -u +%T)" >> OUT/progress
done
echo "train g1 start $(date -u +%T)" >> OUT/progress
nice -n -20 bench/plan_calibration.sh build OUT/g1 > OUT/g1.log 2>&1
echo "train g1 done $(date -u +%T)" >> OUT/progress
echo ALLDONE >> OUT/progress
# c1, c2: in a clean clone of commit 7db3709, after its .ci/run (307 of 307 tests passed):
#   nice -n -20 bench/plan_calibration_engine.sh build OUT/c1
#   make run
#   nice -n -20 bench/plan_calibration.sh build OUT/c2
