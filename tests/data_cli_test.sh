#!/usr/bin/env bash
# `mics data`: prepare shards from text, inspect them (text and JSON), synth a Markov corpus
# (and reuse it), and bad input: one-line error naming the file, non-zero exit, nothing written.
# Usage: data_cli_test.sh MICS_BINARY SOURCE_DIR
set -u
MICS=${1:?usage: data_cli_test.sh MICS_BINARY SOURCE_DIR}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# 1. prepare: 2000 bytes of text, 10% validation, train shards of at most 1000 tokens.
python3 -c "import sys; sys.stdout.write(('To be, or not to be: that is the question.\n' * 100)[:2000])" >"$TMP/play.txt"
"$MICS" data prepare --out "$TMP/out" --shard-tokens 1000 "$TMP/play.txt" >"$TMP/prep.txt" 2>&1
rc=$?
[ "$rc" -eq 0 ] && pass "prepare exits 0" || { fail "prepare exited $rc"; cat "$TMP/prep.txt"; }
for f in play_train_000000.bin play_train_000001.bin play_val_000000.bin; do
  [ -f "$TMP/out/$f" ] && pass "wrote $f" || fail "no $f"
done
[ "$(stat -c %s "$TMP/out/play_train_000001.bin")" -eq $((1024 + 2 * 800)) ] && pass "second train shard has 800 tokens" ||
  fail "second train shard size $(stat -c %s "$TMP/out/play_train_000001.bin")"
[ "$(stat -c %s "$TMP/out/play_val_000000.bin")" -eq $((1024 + 2 * 200)) ] && pass "val shard has 200 tokens" ||
  fail "val shard size"
grep -q "wrote .*play_val_000000.bin: 200 tokens" "$TMP/prep.txt" && pass "prepare says what it wrote" || fail "prepare output"

# 2. inspect: header, size, statistics; JSON agrees with the text.
"$MICS" data inspect "$TMP/out/play_train_000000.bin" >"$TMP/insp.txt" 2>&1
rc=$?
[ "$rc" -eq 0 ] && pass "inspect exits 0" || { fail "inspect exited $rc"; cat "$TMP/insp.txt"; }
grep -q "magic 20240520, version 1, 2-byte tokens, 1000 tokens" "$TMP/insp.txt" && pass "inspect header" || fail "inspect header"
grep -q "file size: 3024 bytes" "$TMP/insp.txt" && pass "inspect file size" || fail "inspect file size"
grep -q "unigram entropy" "$TMP/insp.txt" && grep -q "top ids" "$TMP/insp.txt" && pass "inspect statistics" || fail "inspect statistics"
grep -qF 'as bytes:  "To be, or not to be: that is the question.\n' "$TMP/insp.txt" && pass "inspect sample" || fail "inspect sample"
"$MICS" data inspect --json "$TMP/out/play_train_000000.bin" "$TMP/out/play_val_000000.bin" >"$TMP/insp.json" 2>&1
python3 - "$TMP/insp.json" "$TMP/play.txt" <<'PY' && pass "inspect --json is valid and right" || fail "inspect --json"
import json, math, sys, collections
d = json.load(open(sys.argv[1]))
text = open(sys.argv[2], "rb").read()
f = d["files"][0]
assert f["magic"] == 20240520 and f["version"] == 1 and f["token_bytes"] == 2, f
assert f["tokens"] == 1000 and f["file_bytes"] == 3024, f
c = collections.Counter(text[:1000])
assert f["distinct_ids"] == len(c) and f["min_id"] == min(c) and f["max_id"] == max(c), f
h = -sum(n / 1000 * math.log(n / 1000) for n in c.values())
assert abs(f["unigram_entropy_nats"] - h) < 1e-9, (f["unigram_entropy_nats"], h)
assert f["top"][0]["id"] == c.most_common(1)[0][0] and len(f["top"]) == 10
assert d["files"][1]["tokens"] == 200
PY

# 3. synth: files, entropy rate; a second call reuses the corpus.
"$MICS" data synth --out "$TMP/syn" --tokens 50000 --seed 7 --states 32 --branching 3 >"$TMP/syn.txt" 2>&1
rc=$?
[ "$rc" -eq 0 ] && pass "synth exits 0" || { fail "synth exited $rc"; cat "$TMP/syn.txt"; }
grep -qE "entropy rate: [0-9.]+ nats/token" "$TMP/syn.txt" && pass "synth prints the entropy rate" || fail "synth output"
[ -f "$TMP/syn/corpus.json" ] && [ -f "$TMP/syn/synth_train_000000.bin" ] && [ -f "$TMP/syn/synth_val_000000.bin" ] &&
  pass "synth wrote the corpus" || fail "synth files"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['train_tokens']==50000 and d['val_tokens']==5000 and d['states']==32" \
  "$TMP/syn/corpus.json" && pass "corpus.json" || fail "corpus.json"
"$MICS" data synth --out "$TMP/syn" --tokens 50000 --seed 7 --states 32 --branching 3 >"$TMP/syn2.txt" 2>&1
grep -q "^reused" "$TMP/syn2.txt" && pass "synth reuses an existing corpus" || fail "synth regenerated"
"$MICS" data synth --out "$TMP/syn" --tokens 50000 --seed 8 >"$TMP/syn3.txt" 2>&1
rc=$?
[ "$rc" -ne 0 ] && grep -q "another synthetic corpus" "$TMP/syn3.txt" && pass "synth refuses another spec" || fail "synth over another spec: rc=$rc"
ls -d "$TMP"/syn.tmp-* >/dev/null 2>&1 && fail "synth left a temporary directory" || pass "no temporary directory"

# 4. Bad input: non-zero exit, one line naming the file, nothing written.
one_line_error() {  # NAME FILE_TO_NAME OUTPUT RC
  local lines
  lines=$(wc -l <"$3")
  if [ "$4" -ne 0 ] && [ "$lines" -eq 1 ] && grep -q "^mics: error: .*$2" "$3"; then pass "$1"; else
    fail "$1 (rc=$4, $lines lines)"; cat "$3"; fi
}
"$MICS" data prepare --out "$TMP/bad1" "$TMP/play.txt" "$TMP/missing.txt" >"$TMP/e1.txt" 2>&1
one_line_error "prepare with a missing file" "missing.txt" "$TMP/e1.txt" $?
[ ! -e "$TMP/bad1" ] && pass "nothing written for a missing input" || fail "prepare left $TMP/bad1"
: >"$TMP/empty.txt"
"$MICS" data prepare --out "$TMP/bad2" "$TMP/empty.txt" >"$TMP/e2.txt" 2>&1
one_line_error "prepare with an empty input" "empty.txt" "$TMP/e2.txt" $?
[ ! -e "$TMP/bad2" ] && pass "nothing written for an empty input" || fail "prepare left $TMP/bad2"
head -c 2000 "$TMP/out/play_train_000000.bin" >"$TMP/corrupt.bin"
"$MICS" data inspect "$TMP/corrupt.bin" >"$TMP/e3.txt" 2>&1
one_line_error "inspect a truncated shard" "corrupt.bin.*size 2000 bytes" "$TMP/e3.txt" $?
printf 'garbage that is not a shard' >"$TMP/garbage.bin"
"$MICS" data inspect "$TMP/out/play_val_000000.bin" "$TMP/garbage.bin" >"$TMP/e4.txt" 2>&1
one_line_error "inspect a non-shard" "garbage.bin.*shorter than the 1024-byte header" "$TMP/e4.txt" $?
"$MICS" data inspect "$TMP/nope.bin" >"$TMP/e5.txt" 2>&1
one_line_error "inspect a missing shard" "nope.bin: no such file" "$TMP/e5.txt" $?
"$MICS" data synth --out "$TMP/bad3" --tokens 1000 --states 300 >"$TMP/e6.txt" 2>&1
one_line_error "synth with states > vocab" "states 300" "$TMP/e6.txt" $?
ls -d "$TMP"/bad3* >/dev/null 2>&1 && fail "synth left output for a bad spec" || pass "nothing written for a bad spec"

echo "data_cli_test: $failures failure(s)"
[ "$failures" -eq 0 ]
