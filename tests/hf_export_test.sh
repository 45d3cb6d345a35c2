#!/usr/bin/env bash
# The Hugging Face export computes mics' loss: train a very small GPT a few steps with
# checkpoints (2 ranks, zero3), `mics ckpt export` it (f32), and compare the loss of
# tests/hf_export_check.py (a stdlib-Python GPT-2 forward as transformers' GPT2LMHeadModel
# computes it, on the exported config.json + model.safetensors) with `mics ckpt eval` (mics'
# own forward on the checkpoint) on the same token sequences: within 1e-4 relative.
# (Loading with the transformers library itself is not run here: see docs/ARCHITECTURE.md.)
set -u
MICS=${1:?usage: hf_export_test.sh MICS_BINARY [SOURCE_DIR]}
SRC=${2:-$(cd "$(dirname "$0")/.." && pwd)}
if ! command -v python3 >/dev/null 2>&1; then
  echo "SKIP: python3 is not installed: the export loss check (tests/hf_export_check.py) did not run"
  exit 0
fi
T=$(mktemp -d /tmp/mics-hf-export.XXXXXX)
trap 'rm -rf "$T"' EXIT
export MICS_DATA_DIR=$T/data MICS_TIMEOUT_S=30
fail() { echo "FAIL: $*"; exit 1; }

"$MICS" train -n 2 --strategy zero3 --model L2H2C16V256T16 --seq-len 16 --micro-batch 2 --steps 4 --ckpt-every 2 \
  --samples 0 --eval-batches 1 --seed 5 --lr 3e-3 --out "$T/run" >"$T/train.log" 2>&1 || { cat "$T/train.log"; fail "training"; }
"$MICS" ckpt export "$T/run" --out "$T/hf" >"$T/export.log" 2>&1 || { cat "$T/export.log"; fail "export"; }
# Three sequences of 16 tokens (n_positions): a repeating ramp, and two pseudo-random ones.
python3 - "$T/tokens.txt" <<'PY'
import random, sys
rng = random.Random(11)
rows = [[(3 * i) % 256 for i in range(16)]] + [[rng.randrange(256) for _ in range(16)] for _ in range(2)]
open(sys.argv[1], "w").write("".join(" ".join(map(str, r)) + "\n" for r in rows))
PY
out=$("$MICS" ckpt eval "$T/run" --tokens "$T/tokens.txt" 2>&1) || fail "mics ckpt eval: $out"
echo "$out"
echo "$out" | grep -q "step-00000004" || fail "eval did not use the newest checkpoint: $out"
loss=$(echo "$out" | sed -n 's/.*mean cross-entropy \([0-9.eE+-]*\).*/\1/p')
[ -n "$loss" ] || fail "no loss in: $out"
python3 "$SRC/tests/hf_export_check.py" "$T/hf" "$T/tokens.txt" --expect "$loss" --rtol 1e-4 \
  || fail "the exported model's loss differs from mics' (or the export is not a valid GPT-2 directory)"
# The training moved the model: its loss is not the initial one (the check compares a trained model).
out0=$("$MICS" ckpt eval "$T/run/step-00000002" --tokens "$T/tokens.txt" 2>&1) || fail "eval step 2: $out0"
loss0=$(echo "$out0" | sed -n 's/.*mean cross-entropy \([0-9.eE+-]*\).*/\1/p')
[ "$loss0" != "$loss" ] || fail "steps 2 and 4 have the same loss $loss: the export check would not see a stale model"
# A bad token file is a clear error.
echo "1 2 999" >"$T/bad.txt"
out=$("$MICS" ckpt eval "$T/run" --tokens "$T/bad.txt" 2>&1) && fail "eval accepted token 999 of a 256 vocab"
echo "$out" | grep -q "'999' is not a token id" || fail "bad token message: $out"
echo PASS
