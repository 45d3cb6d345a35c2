#!/usr/bin/env bash
# `mics launch`: the environment of every rank, output prefixing, failure propagation, signal
# forwarding (no orphans), SageMaker and usage errors.
# Usage: launch_cli_test.sh path/to/mics [source dir]
set -u
MICS=${1:?usage: $0 path/to/mics}
# shellcheck source=tests/test_helpers.sh
. "$(dirname "$0")/test_helpers.sh"  # TMP, fail, ok, FAILS
now() { date +%s.%N; }
elapsed_below() { awk -v a="$1" -v b="$2" -v lim="$3" 'BEGIN { exit !((b - a) < lim) }'; }

# --- 1. environment of a 4-rank, 2-node run ------------------------------------------------
out=$("$MICS" launch -n 4 --nodes 2 -- sh -c \
  'echo "$MICS_RANK $MICS_WORLD_SIZE $MICS_LOCAL_RANK $MICS_LOCAL_SIZE $MICS_NODE_ID $MICS_NODE_COUNT $MICS_MASTER_ADDR $MICS_STORE_HOSTED"' \
  2>"$TMP/err")
rc=$?
expected='[0] 0 4 0 2 node0 2 127.0.0.1 1
[1] 1 4 1 2 node0 2 127.0.0.1 1
[2] 2 4 0 2 node1 2 127.0.0.1 1
[3] 3 4 1 2 node1 2 127.0.0.1 1'
if [ $rc -eq 0 ] && [ "$(echo "$out" | sort)" = "$expected" ]; then
  ok "environment of 4 ranks on 2 emulated nodes"
else
  fail "environment (rc=$rc): got
$out
$(cat "$TMP/err")"
fi
# Port and token: the same for every rank, a real port, a non-trivial token.
out=$("$MICS" launch -n 3 -- sh -c 'echo "$MICS_MASTER_PORT $MICS_JOB_TOKEN"')
distinct=$(echo "$out" | sed 's/^\[[0-9]*\] //' | sort -u)
port=${distinct%% *}
token=${distinct#* }
if [ "$(echo "$distinct" | wc -l)" -eq 1 ] && [ "$port" -gt 0 ] && [ ${#token} -ge 16 ]; then
  ok "one store port ($port) and token for every rank"
else
  fail "port/token differ between ranks or look wrong: $out"
fi
# Tokens differ between runs.
out2=$("$MICS" launch -n 1 -- sh -c 'echo "$MICS_JOB_TOKEN"')
[ "${out2#\[0\] }" != "$token" ] && ok "a fresh token per run" || fail "the token repeats"

# --- 2. prefixing ---------------------------------------------------------------------------
"$MICS" launch -n 2 -- sh -c 'echo out-$MICS_RANK; echo err-$MICS_RANK >&2; printf partial' \
  >"$TMP/out" 2>"$TMP/err"
if grep -qx '\[1\] out-1' "$TMP/out" && grep -qx '\[0\] out-0' "$TMP/out" &&
  grep -qx '\[1\] err-1' "$TMP/err" && ! grep -q 'err-' "$TMP/out" &&
  grep -qx '\[0\] partial' "$TMP/out"; then
  ok "stdout and stderr lines are prefixed with [rank] and stay on their stream"
else
  fail "prefixing: stdout:
$(cat "$TMP/out")
stderr:
$(cat "$TMP/err")"
fi
"$MICS" launch -n 2 --no-prefix -- sh -c 'echo plain-$MICS_RANK; echo e >&2' >"$TMP/out" 2>"$TMP/err"
if [ "$(sort "$TMP/out")" = "plain-0
plain-1" ] && [ "$(cat "$TMP/err")" = "e
e" ]; then
  ok "--no-prefix passes output through unchanged"
else
  fail "--no-prefix: $(cat "$TMP/out") / $(cat "$TMP/err")"
fi

# --- 3. a failing rank stops the job --------------------------------------------------------
marker="sleep 100.$$1"
t0=$(now)
"$MICS" launch -n 4 -- sh -c "if [ \$MICS_RANK = 2 ]; then echo 'first words' >&2; \
echo 'last words' >&2; exit 3; fi; $marker" >"$TMP/out" 2>"$TMP/err"
rc=$?
t1=$(now)
if [ $rc -eq 3 ] && elapsed_below "$t0" "$t1" 10 &&
  grep -q 'rank 2 exited with status 3' "$TMP/err" &&
  grep -q '^  \[2\] first words' "$TMP/err" && grep -q '^  \[2\] last words' "$TMP/err"; then
  ok "rank 2 exiting 3 ends the job with status 3 in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s, naming it and its stderr"
else
  fail "failing rank (rc=$rc, $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') s):
$(cat "$TMP/err")"
fi
if pgrep -f "$marker" >/dev/null; then
  fail "ranks left running after a failure: $(pgrep -af "$marker")"
  kill $(pgrep -f "$marker") 2>/dev/null
else
  ok "no rank left running after the failure"
fi

# A rank killed by a signal.
"$MICS" launch -n 2 -- sh -c 'if [ $MICS_RANK = 0 ]; then kill -9 $$; fi; sleep 100' \
  >/dev/null 2>"$TMP/err"
rc=$?
if [ $rc -eq 137 ] && grep -q 'rank 0 was killed by signal 9 (KILL)' "$TMP/err"; then
  ok "a rank killed by SIGKILL: status 137 and the signal named"
else
  fail "signal death (rc=$rc): $(cat "$TMP/err")"
fi

# A rank that ignores SIGTERM is killed after the grace period.
t0=$(now)
"$MICS" launch -n 2 -- sh -c 'if [ $MICS_RANK = 0 ]; then sleep 0.5; exit 1; fi; trap "" TERM; sleep 100' \
  >/dev/null 2>"$TMP/err"
rc=$?
t1=$(now)
if [ $rc -eq 1 ] && elapsed_below "$t0" "$t1" 8 && ! elapsed_below "$t0" "$t1" 3; then
  ok "a rank ignoring SIGTERM is killed (SIGKILL after the grace period)"
else
  fail "SIGTERM-ignoring rank (rc=$rc): $(cat "$TMP/err")"
fi

# --- 4. SIGTERM to the launcher reaches every rank ------------------------------------------
marker="sleep 100.$$2"
"$MICS" launch -n 3 -- sh -c "$marker; echo unreachable" >"$TMP/out" 2>"$TMP/err" &
launcher=$!
for _ in $(seq 50); do
  [ "$(pgrep -f "^sleep 100.$$2" | wc -l)" -eq 3 ] && break
  sleep 0.1
done
kill -TERM $launcher
wait $launcher
rc=$?
sleep 0.2
left=$(pgrep -f "$marker")
if [ $rc -eq 143 ] && [ -z "$left" ] && ! grep -q unreachable "$TMP/out"; then
  ok "SIGTERM to the launcher stops every rank (status 143, no orphans)"
else
  fail "SIGTERM forwarding (rc=$rc), left: $(pgrep -af "$marker")"
  [ -n "$left" ] && kill $left 2>/dev/null
fi

# --- 5. SageMaker layout --------------------------------------------------------------------
out=$(SM_HOSTS='["algo-1","algo-2"]' SM_CURRENT_HOST=algo-2 SM_NUM_GPUS=2 \
  TRAINING_JOB_NAME=my-job MICS_JOB_TOKEN= "$MICS" launch -- sh -c \
  'echo "$MICS_RANK $MICS_WORLD_SIZE $MICS_LOCAL_RANK $MICS_NODE_ID $MICS_NODE_COUNT $MICS_MASTER_ADDR $MICS_MASTER_PORT $MICS_JOB_TOKEN"' 2>&1)
expected='[2] 2 4 0 node1 2 algo-1 29570 sagemaker:my-job
[3] 3 4 1 node1 2 algo-1 29570 sagemaker:my-job'
if [ "$(echo "$out" | sort)" = "$expected" ]; then
  ok "SageMaker: second host of two runs ranks 2-3, master algo-1"
else
  fail "SageMaker layout: $out"
fi

# --- 6. usage errors --------------------------------------------------------------------------
check_usage() {
  local want=$1
  shift
  "$MICS" launch "$@" >"$TMP/out" 2>&1
  local rc=$?
  if [ $rc -eq 2 ] && grep -q -- "$want" "$TMP/out"; then
    ok "usage error: $want"
  else
    fail "usage error '$want' (rc=$rc): $(cat "$TMP/out")"
  fi
}
check_usage "cannot be split into --nodes 2" -n 3 --nodes 2 -- true
check_usage "not found in PATH" -n 1 -- no-such-program-here
check_usage "number of ranks is missing" -- true
check_usage "master-addr is required" -n 1 --nnodes 2 --node-rank 1 -- true
MICS_JOB_TOKEN= check_usage "needs a shared token" -n 1 --nnodes 2 --node-rank 1 --master-addr 127.0.0.1 -- true

# --- 7. no library signal handlers in the ranks -----------------------------------------------
# libfabric's psm provider loads libinfinipath, which would catch SIGINT/SIGTERM while a rank
# loads and exit 1 silently (writing a .btr file); mics sets IPATH_NO_BACKTRACE=1 for what it
# starts (src/tools/main.cpp), and a value the user chose is kept.
out=$(env -u IPATH_NO_BACKTRACE "$MICS" launch -n 2 --no-prefix -- sh -c 'echo "${IPATH_NO_BACKTRACE:-unset}"' 2>&1)
[ "$out" = "1
1" ] && ok "ranks start with IPATH_NO_BACKTRACE=1" || fail "IPATH_NO_BACKTRACE in the ranks: '$out'"
out=$(IPATH_NO_BACKTRACE=0 "$MICS" launch -n 1 --no-prefix -- sh -c 'echo "$IPATH_NO_BACKTRACE"' 2>&1)
[ "$out" = "0" ] && ok "a user's IPATH_NO_BACKTRACE is kept" || fail "user's IPATH_NO_BACKTRACE: '$out'"

# Arguments after the command belong to it, with or without "--".
out=$("$MICS" launch -n 1 --no-prefix echo -n --nodes 2)
[ "$out" = "--nodes 2" ] && ok "options after the command are the command's" ||
  fail "argument passing: '$out'"

if [ $FAILS -ne 0 ]; then
  echo "$FAILS check(s) failed" >&2
  exit 1
fi
echo "all launch checks passed"
