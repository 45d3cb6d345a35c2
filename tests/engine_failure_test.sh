#!/usr/bin/env bash
# A rank killed in the middle of training (the engine's communication thread is inside a
# gather or a reduce-scatter): every surviving rank must fail on its own within the deadline
# (MICS_TIMEOUT_S) with an error naming a peer rank. Ranks are started directly (rank 0 hosts
# the store) so that no launcher stops the survivors for them.
set -u
MICS=$1
EXAMPLE=$(dirname "$MICS")/examples/train_mlp
TIMEOUT_S=6
n=4 k=2 victim=2 fail=0
tmp=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
port=$((21000 + RANDOM % 11000))
pids=()
for ((r = 0; r < n; r++)); do
  MICS_RANK=$r MICS_WORLD_SIZE=$n MICS_LOCAL_RANK=$((r % (n / k))) MICS_NODE_ID=node$((r / (n / k))) \
  MICS_MASTER_ADDR=127.0.0.1 MICS_MASTER_PORT=$port MICS_JOB_TOKEN=engine-failure \
  MICS_TIMEOUT_S=$TIMEOUT_S "$EXAMPLE" --strategy mics --partition-size 2 --steps 1000000 \
    >"$tmp/out.$r" 2>"$tmp/err.$r" &
  pids+=($!)
done
for _ in $(seq 200); do grep -q "^step *3 " "$tmp/out.0" 2>/dev/null && break; sleep 0.1; done
grep -q "^step *3 " "$tmp/out.0" || { echo "FAIL: training did not start"; cat "$tmp"/err.*; exit 1; }
kill -9 "${pids[$victim]}"
t0=$(date +%s.%N)
for ((r = 0; r < n; r++)); do
  [ "$r" -eq "$victim" ] && continue
  waited=0
  while kill -0 "${pids[$r]}" 2>/dev/null && [ $waited -lt $(((TIMEOUT_S + 6) * 10)) ]; do
    sleep 0.1; waited=$((waited + 1))
  done
  if kill -0 "${pids[$r]}" 2>/dev/null; then
    echo "FAIL: rank $r still running $((waited / 10)) s after rank $victim was killed; its stderr so far:" \
      "$(head -c 400 "$tmp/err.$r")"; fail=1; continue
  fi
  wait "${pids[$r]}"; rc=$?
  err=$(cat "$tmp/err.$r")
  [ $rc -ne 0 ] || { echo "FAIL: rank $r exited 0"; fail=1; }
  grep -q "rank [0-9]" <<<"$err" || { echo "FAIL: rank $r's error names no peer: $err"; fail=1; }
  echo "ok rank $r after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s: $(head -c 260 <<<"$err")"
done
exit $fail
