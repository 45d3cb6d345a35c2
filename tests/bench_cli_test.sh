#!/usr/bin/env bash
# `mics bench`: every operation validated (--check) on 3 ranks (counts not divisible by 3),
# sendrecv's traffic equal to its definition on 1 and 2 emulated nodes, and usage errors.
# Usage: bench_cli_test.sh path/to/mics [source dir]
set -u
MICS=${1:?usage: $0 path/to/mics}
# shellcheck source=tests/test_helpers.sh
. "$(dirname "$0")/test_helpers.sh"  # TMP, fail, ok, FAILS

# --- 1. all operations, checked --------------------------------------------------------------
if MICS_TIMEOUT_S=60 "$MICS" launch -n 3 --no-prefix -- "$MICS" bench \
    --op all_gather,reduce_scatter,all_reduce,broadcast,sendrecv -b 12 -e 300K -f 7 -w 1 -n 2 --check \
    --json "$TMP/bench.json" > "$TMP/out" 2> "$TMP/err"; then
  ok "3 ranks, every operation --check"
else
  fail "bench --check failed: $(tail -5 "$TMP/err") $(tail -5 "$TMP/out")"
fi
# #wrong is column 9 of every result line; all must be 0
wrong=$(grep -v '^#' "$TMP/out" | awk 'NF >= 12 && $9 != "0"' | wc -l)
rows=$(grep -v '^#' "$TMP/out" | awk 'NF >= 12' | wc -l)
if [ "$rows" -ge 15 ] && [ "$wrong" -eq 0 ]; then ok "$rows rows, none wrong"; else fail "rows=$rows wrong=$wrong"; fi
# sendrecv: each rank sends exactly `size` bytes per iteration (intra column 10 on one node)
bad=$(grep -v '^#' "$TMP/out" | awk '$5 == "p2p" && ($1 != $10 || $11 != 0)' | wc -l)
srv=$(grep -v '^#' "$TMP/out" | awk '$5 == "p2p"' | wc -l)
if [ "$srv" -ge 3 ] && [ "$bad" -eq 0 ]; then ok "sendrecv: size bytes per rank, intra-node"; else
  fail "sendrecv traffic rows: $(grep -v '^#' "$TMP/out" | awk '$5 == "p2p"')"; fi
# 2 nodes x 2 ranks: 1 -> 2 and 3 -> 0 cross nodes, so each node sends `size` bytes inter-node;
# 4 KiB message chunks, so the 8K and 64K messages go as 2 and 16 chunks
if MICS_TIMEOUT_S=60 MICS_GATHER_CHUNK_BYTES=4096 "$MICS" launch -n 4 --nodes 2 --no-prefix -- "$MICS" bench --op sendrecv -b 1K -e 64K -f 8 \
    -w 1 -n 2 --check > "$TMP/out2" 2> "$TMP/err2"; then
  bad=$(grep -v '^#' "$TMP/out2" | awk 'NF >= 12 && ($9 != "0" || $11 != $1 || $12 != $1)' | wc -l)
  if [ "$bad" -eq 0 ]; then ok "sendrecv on 2 nodes, chunked messages: checked, size bytes inter-node per rank and per node"; else
    fail "sendrecv 2 nodes: $(grep -v '^#' "$TMP/out2")"; fi
else
  fail "sendrecv on 2 nodes failed: $(tail -5 "$TMP/err2")"
fi
if python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if any(r['op']=='sendrecv' for r in d['results']) else 1)" "$TMP/bench.json" 2>/dev/null; then
  ok "--json has the sendrecv rows"
else
  fail "--json: $(head -c 300 "$TMP/bench.json")"
fi

# --- 2. usage errors --------------------------------------------------------------------------
for args in "--op scatter" "--op sendrecv --algo ring" "-b 1M -e 1K"; do
  # shellcheck disable=SC2086
  if "$MICS" launch -n 2 --no-prefix -- "$MICS" bench $args > "$TMP/out" 2> "$TMP/err"; then
    fail "bench $args succeeded"
  elif grep -qiE "unknown --op|does not apply|bad size range" "$TMP/err" "$TMP/out"; then
    ok "bench $args: $(grep -hiE "unknown --op|does not apply|bad size range" "$TMP/err" "$TMP/out" | head -1)"
  else
    fail "bench $args: no clear error: $(tail -3 "$TMP/err")"
  fi
done

[ $FAILS -eq 0 ] && echo "all bench CLI checks passed"
exit $((FAILS > 0))
