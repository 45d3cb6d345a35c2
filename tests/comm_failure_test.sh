#!/usr/bin/env bash
# A rank that dies (SIGKILL) or goes silent (SIGSTOP) in the middle of a collective: every
# surviving rank must fail on its own within the deadline (MICS_TIMEOUT_S) with an error that
# names the operation, the communicator and a peer. The ranks are started directly (rank 0
# hosts the store), not by `mics launch`, so that no launcher stops the survivors for them.
set -u
MICS=$1
WORKER=$(dirname "$MICS")/tests/comm_worker
TIMEOUT_S=6
fail=0
tmp=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT

run_case() {  # $1 = signal, $2 = ranks, $3 = nodes, $4 = victim
  local sig=$1 n=$2 k=$3 victim=$4 port=$((21000 + RANDOM % 11000))
  local pids=()
  for ((r = 0; r < n; r++)); do
    MICS_RANK=$r MICS_WORLD_SIZE=$n MICS_LOCAL_RANK=$((r % (n / k))) MICS_NODE_ID=node$((r / (n / k))) \
    MICS_MASTER_ADDR=127.0.0.1 MICS_MASTER_PORT=$port MICS_JOB_TOKEN=failure-test \
    MICS_TIMEOUT_S=$TIMEOUT_S "$WORKER" loop >"$tmp/out.$r" 2>"$tmp/err.$r" &
    pids+=($!)
  done
  # Wait until every rank is inside the loop, then strike.
  for _ in $(seq 100); do
    [ "$(cat "$tmp"/out.* 2>/dev/null | grep -c looping)" -eq "$n" ] && break
    sleep 0.1
  done
  kill -s "$sig" "${pids[$victim]}"
  local t0=$(date +%s.%N)
  for ((r = 0; r < n; r++)); do
    [ "$r" -eq "$victim" ] && continue
    # Each survivor must exit non-zero within the deadline plus slack: a heavily loaded host
    # (ctest -j on few cores) can hold a process off a core for seconds, so the slack is wide;
    # a hang is still caught.
    local waited=0
    while kill -0 "${pids[$r]}" 2>/dev/null && [ $waited -lt $(( (2 * TIMEOUT_S + 6) * 10 )) ]; do
      sleep 0.1; waited=$((waited + 1))
    done
    if kill -0 "${pids[$r]}" 2>/dev/null; then
      # Say whether it had reported its error (then it hangs on the way out) or not (in a wait).
      echo "FAIL [$sig n=$n k=$k]: rank $r still running $(( waited / 10 )) s after rank $victim got $sig;" \
        "its stderr so far: $(head -c 400 "$tmp/err.$r")"
      fail=1; kill -9 "${pids[$r]}"; continue
    fi
    wait "${pids[$r]}"; local rc=$?
    local err; err=$(cat "$tmp/err.$r")
    if [ $rc -eq 0 ]; then echo "FAIL [$sig]: rank $r exited 0"; fail=1; fi
    for want in "all_reduce" "communicator 'world'" "rank "; do
      if ! grep -q "$want" <<<"$err"; then
        echo "FAIL [$sig n=$n k=$k]: rank $r's error does not mention \"$want\": $err"; fail=1
      fi
    done
    echo "ok [$sig n=$n k=$k] rank $r after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s: $(head -c 300 <<<"$err")"
  done
  kill -9 "${pids[$victim]}" 2>/dev/null; wait 2>/dev/null
}

run_case KILL 4 1 2   # same node (shm)
run_case KILL 4 2 1   # across emulated nodes (tcp)
run_case STOP 3 1 1   # silent peer
exit $fail
