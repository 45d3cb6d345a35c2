#!/usr/bin/env bash
# The main job of `make run`: the tiny GPT trained with MiCS (p = 2) on 4 ranks as 2 emulated
# nodes of 2, on the embedded synthetic corpus (generated on first use under MICS_DATA_DIR or
# ~/.cache/mics). With p = ranks per node, parameter gathers and gradient reduce-scatters stay
# on the node's shm rail; only the 2-hop all-reduce of the shards crosses the network rail.
# Prints a line per step, the samples and the summary (eval loss vs the corpus' entropy floor);
# the metrics are in $OUT/metrics.jsonl.
set -euo pipefail
MICS=${1:-build/mics}
OUT=${MICS_RUN_DIR:-out/main-job}
mkdir -p "$OUT"
exec "$MICS" train -n 4 --nodes 2 --strategy mics --partition-size 2 --model tiny \
  --steps "${MICS_MAIN_STEPS:-300}" --log-every 25 --eval-every 100 --out "$OUT"
