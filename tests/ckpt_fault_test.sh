#!/usr/bin/env bash
# Checkpoints under faults (mics train, 2 ranks, the tiny GPT):
#  1. SIGKILL a random rank at a random time, 20 times, while it saves a checkpoint every step
#     (writes slowed by MICS_DEBUG_CKPT_WRITE_DELAY_MS so that most kills land inside a save);
#     each run resumes (--resume auto) from the previous one's newest commit. After every kill
#     the newest committed checkpoint must verify, and the last run must resume from it.
#  2. A flipped byte in a shard file: mics ckpt verify fails naming the file and chunk, and
#     --resume auto falls back past that checkpoint saying why.
#  3. Disk errors: a file size limit (EFBIG, as a full disk) mid-run -> a clear error, training
#     continues, the final save fails the run, the previous checkpoint verifies; as root also a
#     real full tmpfs (ENOSPC) and a read-only one (EROFS).
#  4. The --out directory removed (rm -rf) while the run goes on: the next save fails with an
#     error naming the path and saying that training continues; the run trains to its last
#     step and then fails on the final save (exit status 1, no crash).
set -u
MICS=${1:?usage: ckpt_fault_test.sh MICS_BINARY}
T=$(mktemp -d /tmp/mics-ckpt-fault.XXXXXX)
trap 'rm -rf "$T"; mountpoint -q "$T/full" 2>/dev/null && umount "$T/full"' EXIT
export MICS_DATA_DIR=$T/data MICS_TIMEOUT_S=20
COMMON="--model tiny --micro-batch 2 --seq-len 32 --samples 0 --eval-batches 1 --seed 3 --log-every 1000"
fail() { echo "FAIL: $*"; exit 1; }
newest_committed() { ls -d "$1"/step-* 2>/dev/null | sort -r | while read -r d; do [ -f "$d/manifest.json" ] && { echo "$d"; break; }; done; }

"$MICS" train $COMMON --steps 1 --strategy ddp >/dev/null 2>&1 || fail "warm-up run (embedded corpus)"
# --- 1. SIGKILL during saves -------------------------------------------------------------
R=$T/run
RANDOM=7
for i in $(seq 1 "${CKPT_FAULT_ITERATIONS:-20}"); do
  MICS_DEBUG_CKPT_WRITE_DELAY_MS=2 "$MICS" train -n 2 $COMMON --steps 100000 --ckpt-every 1 --keep 2 \
    --resume auto --out "$R" >"$T/log.$i" 2>&1 &
  launcher=$!
  ranks=()
  for _ in $(seq 100); do  # until the launcher has started the ranks
    ranks=($(pgrep -P "$launcher")) && [ ${#ranks[@]} -eq 2 ] && break
    sleep 0.05
  done
  sleep "0.$((2 + RANDOM % 8))"
  [ ${#ranks[@]} -gt 0 ] || { cat "$T/log.$i"; fail "iteration $i: no rank processes"; }
  victim=${ranks[$((RANDOM % ${#ranks[@]}))]}
  kill -9 "$victim" 2>/dev/null
  for _ in $(seq 10); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.1; done
  kill -9 "${ranks[@]}" 2>/dev/null  # the survivor gets 1 s to react (the launcher's SIGTERM), then goes too
  wait "$launcher"
  newest=$(newest_committed "$R")
  if [ -n "$newest" ]; then
    "$MICS" ckpt verify "$newest" >"$T/verify.$i" 2>&1 || { cat "$T/verify.$i" "$T/log.$i"; fail "iteration $i: newest committed $newest does not verify"; }
  fi
  echo "iteration $i: killed pid $victim; newest committed: ${newest:-none}"
done
newest=$(newest_committed "$R")
[ -n "$newest" ] || fail "no checkpoint was ever committed in 20 runs"
step=$((10#${newest##*step-}))
"$MICS" train -n 2 $COMMON --steps $((step + 1)) --ckpt-every 1000 --resume auto --out "$R" >"$T/final.log" 2>&1 \
  || { cat "$T/final.log"; fail "the run after the kills failed"; }
grep -q "resumed from $newest" "$T/final.log" || { cat "$T/final.log"; fail "did not resume from $newest"; }
echo "ok: 20 kills, resumed from $newest"

# --- 2. a flipped byte ---------------------------------------------------------------------
F=$T/flip
"$MICS" train -n 2 $COMMON --steps 4 --ckpt-every 2 --out "$F" >"$T/flip.log" 2>&1 || { cat "$T/flip.log"; fail "flip run"; }
python3 - "$F/step-00000004/rank-00001.bin" <<'PY'
import sys
p = sys.argv[1]
with open(p, 'r+b') as f:
    f.seek(1000); b = f.read(1); f.seek(1000); f.write(bytes([b[0] ^ 0x10]))
PY
out=$("$MICS" ckpt verify "$F/step-00000004" 2>&1) && fail "verify passed a flipped byte: $out"
echo "$out" | grep -q "digest mismatch in rank-00001.bin chunk" || fail "verify message: $out"
"$MICS" train -n 2 $COMMON --steps 5 --resume auto --out "$F" >"$T/flip2.log" 2>&1 || { cat "$T/flip2.log"; fail "resume after flip"; }
grep -q "digest mismatch" "$T/flip2.log" && grep -q "resumed from $F/step-00000002" "$T/flip2.log" \
  || { cat "$T/flip2.log"; fail "resume did not fall back past the flipped byte"; }
echo "ok: flipped byte caught by verify and by resume"

# --- 3. disk errors ----------------------------------------------------------------------
D=$T/disk
"$MICS" train -n 1 --strategy ddp $COMMON --steps 3 --ckpt-every 3 --out "$D" >"$T/d1.log" 2>&1 || { cat "$T/d1.log"; fail "disk run 1"; }
# One rank (the shm rail needs large files); its rank file is 1.4 MiB: a 1 MiB file size
# limit makes every save fail with EFBIG.
(trap '' XFSZ; ulimit -f 1024; exec "$MICS" train -n 1 --strategy ddp $COMMON --steps 9 --ckpt-every 3 --resume auto --out "$D") >"$T/d2.log" 2>&1 \
  && { cat "$T/d2.log"; fail "a run whose final checkpoint cannot be written succeeded"; }
grep -q "File too large" "$T/d2.log" && grep -q "training continues without this one" "$T/d2.log" \
  && grep -q "step: 9" "$T/d2.log" && grep -q "final checkpoint (step 9) could not be saved" "$T/d2.log" \
  || { cat "$T/d2.log"; fail "file size limit: messages"; }
[ -e "$D/step-00000006" ] && fail "a failed save left $D/step-00000006"
"$MICS" ckpt verify "$D/step-00000003" >/dev/null || fail "the previous checkpoint was damaged by the failed saves"
echo "ok: EFBIG mid-run -> clear error, training went on, previous checkpoint intact"
if [ "$(id -u)" = 0 ] && mkdir -p "$T/full" && mount -t tmpfs -o size=1m tmpfs "$T/full" 2>/dev/null; then
  "$MICS" train -n 2 $COMMON --steps 2 --ckpt-every 1 --out "$T/full/run" >"$T/d3.log" 2>&1 \
    && { cat "$T/d3.log"; fail "a full disk went unnoticed"; }
  grep -q "No space left on device" "$T/d3.log" || { cat "$T/d3.log"; fail "ENOSPC message"; }
  mount -o remount,ro "$T/full"
  "$MICS" train -n 2 $COMMON --steps 2 --ckpt-every 1 --resume auto --out "$T/full/run" >"$T/d4.log" 2>&1 \
    && { cat "$T/d4.log"; fail "a read-only disk went unnoticed"; }
  grep -q "Read-only file system" "$T/d4.log" || { cat "$T/d4.log"; fail "EROFS message"; }
  umount "$T/full"
  echo "ok: ENOSPC and EROFS on tmpfs"
fi
# --- 4. a vanished --out directory -------------------------------------------------------
V=$T/vanish
MICS_DEBUG_CKPT_WRITE_DELAY_MS=1 "$MICS" train -n 2 $COMMON --steps 40 --ckpt-every 1 --keep 1 --out "$V" >"$T/v.log" 2>&1 &
run=$!
for _ in $(seq 400); do ls "$V"/step-*/manifest.json >/dev/null 2>&1 && break; sleep 0.02; done
ls "$V"/step-*/manifest.json >/dev/null 2>&1 || { wait "$run"; cat "$T/v.log"; fail "vanish: no checkpoint committed"; }
for _ in $(seq 50); do rm -rf "$V" 2>/dev/null; [ -e "$V" ] || break; done  # a save may mkdir meanwhile
kill -0 "$run" 2>/dev/null || { cat "$T/v.log"; fail "vanish: the run ended before --out was removed (make it longer)"; }
wait "$run"
status=$?
[ "$status" = 1 ] || { cat "$T/v.log"; fail "vanish: exit status $status (want 1: the final save failed, no crash)"; }
grep -q "$V/step-[0-9]*.*No such file or directory" "$T/v.log" || { cat "$T/v.log"; fail "vanish: no error naming the path"; }
grep -q "vanished" "$T/v.log" || { cat "$T/v.log"; fail "vanish: the hint does not say the directory vanished"; }
grep -q "training continues without this one" "$T/v.log" || { cat "$T/v.log"; fail "vanish: does not say training continues"; }
grep -q "final checkpoint (step 40) could not be saved" "$T/v.log" || { cat "$T/v.log"; fail "vanish: the final save's failure"; }
grep -qi "segmentation\|core dumped\|terminate called\|internal error" "$T/v.log" && { cat "$T/v.log"; fail "vanish: crashed"; }
echo "ok: --out removed mid-run -> clear error naming the path, training went on to step 40, final save failed"
echo PASS
