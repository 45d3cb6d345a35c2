#!/usr/bin/env bash
# examples/train_mlp.cpp, built on the public API, trains under `mics launch` on 2 emulated
# nodes: it exits 0 for each strategy and its loss decreases.
# Usage: example_test.sh path/to/mics [source dir]
set -u
MICS=${1:?usage: $0 path/to/mics}
EXAMPLE=$(dirname "$MICS")/examples/train_mlp
FAILS=0
fail() {
  echo "FAIL: $*" >&2
  FAILS=$((FAILS + 1))
}
[ -x "$EXAMPLE" ] || { echo "FAIL: $EXAMPLE not built" >&2; exit 1; }
for strategy in mics zero3 ddp; do
  start=$(date +%s.%N)
  out=$(MICS_TIMEOUT_S=60 "$MICS" launch -n 4 --nodes 2 -- "$EXAMPLE" --strategy "$strategy" 2>&1)
  rc=$?
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  echo "$out" | grep -E '^\[0\] (train_mlp|loss)'
  if [ $rc -ne 0 ]; then
    fail "$strategy: exit status $rc
$out"
    continue
  fi
  # "[0] loss FIRST -> LAST; ..." from rank 0
  line=$(echo "$out" | grep -E '^\[0\] loss [0-9.]+ -> [0-9.]+' | head -1)
  first=$(echo "$line" | awk '{ print $3 }')
  last=$(echo "$line" | awk '{ print $5 }' | tr -d ';')
  if [ -z "$line" ] || ! awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.5 * a) }'; then
    fail "$strategy: loss did not decrease by half ($first -> $last)
$out"
  else
    echo "ok: $strategy trains, loss $first -> $last (${secs} s)"
  fi
done
exit $FAILS
