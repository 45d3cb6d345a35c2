#!/usr/bin/env bash
# bench/gpu_rounds.sh (the interleaved side-by-side rounds) on the CPU path with a tiny model:
# every round runs every variant, rounds.tsv and summary.md carry the figures and the ratios, and
# bad settings or a failing variant stop it with an error that names them.
# Usage: gpu_rounds_test.sh path/to/mics source-dir
set -u
MICS=${1:?usage: $0 path/to/mics source-dir}
SRC=${2:?usage: $0 path/to/mics source-dir}
# shellcheck source=tests/test_helpers.sh
. "$(dirname "$0")/test_helpers.sh"  # TMP, fail, ok, FAILS

"$MICS" data synth --out "$TMP/data" --tokens 100000 > /dev/null || { echo "FAIL: mics data synth" >&2; exit 1; }
run() {
  env MICS="$MICS" DEVICE=cpu MODEL=L2H2C64V256T64 SEQ=64 BATCH=2 STEPS=5 DATA="$TMP/data/*train*" \
    "$@" bash "$SRC/bench/gpu_rounds.sh" "$TMP/out" > "$TMP/stdout" 2> "$TMP/stderr"
}

# --- 1. two rounds of two variants ------------------------------------------------------------
if run ROUNDS=2 VARIANTS='MICS_LOG_LEVEL=warn|-'; then
  ok "two rounds ran"
else
  fail "two rounds: $(tail -3 "$TMP/stderr")"
fi
rows=$(awk -F'\t' 'NR > 1 && $2 == "mics" && $4 > 0' "$TMP/out/rounds.tsv" 2>/dev/null | wc -l)
order=$(awk -F'\t' 'NR > 1 {printf "%s:%s ", $1, $3}' "$TMP/out/rounds.tsv" 2>/dev/null)
if [ "$rows" -eq 4 ] && [ "$order" = "1:MICS_LOG_LEVEL=warn 1:- 2:MICS_LOG_LEVEL=warn 2:- " ]; then
  ok "rounds.tsv: 4 runs, interleaved ($order)"
else
  fail "rounds.tsv: $rows runs with tokens/s, order '$order'"
fi
if grep -qE '^\| mics \| - \| [0-9,]+ / [0-9,]+ \| [0-9,]+ \| [0-9,]+ \|$' "$TMP/out/summary.md" &&
  grep -qE '^- mics \[-\] / mics \[MICS_LOG_LEVEL=warn\]: [0-9.]+ \(means\), [0-9.]+ \(best rounds\)$' \
    "$TMP/out/summary.md"; then
  ok "summary.md: both rounds, mean, best and the ratio"
else
  fail "summary.md: $(cat "$TMP/out/summary.md" 2>/dev/null)"
fi

# --- 2. errors --------------------------------------------------------------------------------
expect_error() {  # expect_error CODE PATTERN SETTINGS...
  local code=$1 pattern=$2
  shift 2
  run "$@"
  local rc=$?
  if [ $rc -eq "$code" ] && grep -qE "$pattern" "$TMP/stderr"; then
    ok "$*: exit $rc, $(grep -hE "$pattern" "$TMP/stderr" | head -1 | cut -c1-120)"
  else
    fail "$*: exit $rc (want $code), stderr: $(tail -2 "$TMP/stderr")"
  fi
}
expect_error 2 "must be numbers" ROUNDS=two
expect_error 2 "STEPS must be at least 5" STEPS=3
expect_error 2 "no mics binary" MICS="$TMP/nope"
expect_error 1 "variant 'MICS_CUDA_OVERLAP_WGRAD=maybe'" ROUNDS=1 VARIANTS='-|MICS_CUDA_OVERLAP_WGRAD=maybe'
expect_error 2 "llm.c runs GPT-2 124M, 350M or 774M only" ROUNDS=1 LLMC_DIR=/nonexistent
expect_error 2 "torch_gpt2.py runs GPT-2 124M, 350M or 774M at SEQ=1024 only" ROUNDS=1 TORCH=1

[ $FAILS -eq 0 ] && echo "all gpu_rounds checks passed"
exit $((FAILS > 0))
