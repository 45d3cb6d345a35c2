#!/usr/bin/env bash
# The watchdog behind MICS_TIMEOUT_S (comm/watchdog.hpp): a rank stuck inside a collective in a
# way its own deadline checks cannot see (MICS_DEBUG_HANG_RANK stops it in a wait, as a
# transport call that never returns would) must end on its own, MICS_WATCHDOG_GRACE_S after the
# deadline, with an error naming the operation, the communicator and the rank it waited on;
# with the watchdog off (MICS_WATCHDOG_GRACE_S=0) it would hang, which the test also checks.
# Ranks start directly (rank 0 hosts the store), not under `mics launch`, which would stop them.
set -u
MICS=$1
WORKER=$(dirname "$MICS")/tests/comm_worker
fail=0
tmp=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT

run() {  # $1 = grace; starts 2 ranks, rank 1 hangs; prints the pids
  local port=$((21000 + RANDOM % 11000))
  for r in 0 1; do
    MICS_RANK=$r MICS_WORLD_SIZE=2 MICS_LOCAL_RANK=$r MICS_NODE_ID=node0 MICS_MASTER_ADDR=127.0.0.1 \
    MICS_MASTER_PORT=$port MICS_JOB_TOKEN=watchdog-test MICS_TIMEOUT_S=2 MICS_WATCHDOG_GRACE_S=$1 \
    MICS_DEBUG_HANG_RANK=1 "$WORKER" loop >"$tmp/out.$1.$r" 2>"$tmp/err.$1.$r" &
    pids+=($!)
  done
}

# 1. watchdog on (1 s grace): rank 1 ends by itself within 2 + 1 + 0.5 s (+ slack for load)
pids=()
run 1
t0=$(date +%s)
waited=0
while kill -0 "${pids[1]}" 2>/dev/null && [ $waited -lt 150 ]; do sleep 0.1; waited=$((waited + 1)); done
if kill -0 "${pids[1]}" 2>/dev/null; then
  echo "FAIL: the hung rank is still running $((waited / 10)) s later: $(head -c 300 "$tmp/err.1.1")"; fail=1
else
  wait "${pids[1]}"; rc=$?
  err=$(cat "$tmp/err.1.1")
  [ $rc -ne 0 ] || { echo "FAIL: the hung rank exited 0"; fail=1; }
  for want in "stuck: all_reduce" "communicator 'world'" "waiting on rank 0" "after its 2.0 s deadline"; do
    grep -q "$want" <<<"$err" || { echo "FAIL: its error lacks \"$want\": $err"; fail=1; }
  done
  echo "ok: rank 1 ended itself after $(( $(date +%s) - t0 )) s: $(head -c 300 <<<"$err")"
fi
wait "${pids[0]}"; rc=$?
[ $rc -ne 0 ] && grep -q "rank 1" "$tmp/err.1.0" && echo "ok: rank 0 failed naming rank 1: $(head -c 200 "$tmp/err.1.0")" ||
  { echo "FAIL: rank 0 (rc $rc): $(cat "$tmp/err.1.0")"; fail=1; }

# 2. watchdog off: the hung rank stays (so the watchdog is what ended it above)
pids=()
run 0
sleep 5
if kill -0 "${pids[1]}" 2>/dev/null; then echo "ok: with MICS_WATCHDOG_GRACE_S=0 the hung rank is still there after 5 s"; else
  echo "FAIL: with the watchdog off the hung rank ended anyway: $(cat "$tmp/err.0.1")"; fail=1; fi
kill -9 "${pids[@]}" 2>/dev/null
exit $fail
