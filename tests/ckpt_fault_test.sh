#!/usr/bin/env bash
# Checkpoints under faults (mics train, 2 ranks, the tiny GPT):
#  1. SIGKILL a random rank at a random time, 20 times (two chains of 10 side by side), while
#     it saves a checkpoint every step
#     (writes slowed by MICS_DEBUG_CKPT_WRITE_DELAY_MS so that saves run back to back and the
#     kills, 0 to 0.4 s after the run's first save began, land inside a save or its commit);
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
# The two kill chains and sections 2-4 run side by side (each is mostly process start-up).
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
# Two independent chains of runs (own run directories, own random streams) go on at once, 10
# kills each: every round is mostly process start-up (launcher, ranks, fabric), which here
# costs wall time, not CPU.
kill_chain() {  # CHAIN ROUNDS
  local c=$1 rounds=$2 R=$T/run$1 i launcher victim newest step
  local ranks=()
  RANDOM=$((7 + c))
  for i in $(seq 1 "$rounds"); do
    MICS_DEBUG_CKPT_WRITE_DELAY_MS=2 "$MICS" train -n 2 $COMMON --steps 100000 --ckpt-every 1 --keep 2 \
      --resume auto --out "$R" >"$T/log.$c.$i" 2>&1 &
    launcher=$!
    ranks=()
    for _ in $(seq 100); do  # until the launcher has started the ranks
      ranks=($(pgrep -P "$launcher")) && [ ${#ranks[@]} -eq 2 ] && break
      sleep 0.05
    done
    # Until this run's first save has started (rank 0 logs its snapshot), then 0 to 0.39 s
    # more: saves follow each other back to back, so the kill lands inside one or its commit.
    for _ in $(seq 200); do grep -q "checkpoint step" "$T/log.$c.$i" && break; sleep 0.02; done
    sleep "0.$(printf %02d $((RANDOM % 40)))"
    [ ${#ranks[@]} -gt 0 ] || { cat "$T/log.$c.$i"; fail "chain $c round $i: no rank processes"; }
    victim=${ranks[$((RANDOM % ${#ranks[@]}))]}
    kill -9 "$victim" 2>/dev/null
    # The survivor gets 0.3 s to act on its own (finish a write; rank 0 a commit or a deletion
    # agreed on before the kill: nothing new can be agreed) and to take the launcher's
    # SIGTERM, then goes too.
    for _ in $(seq 6); do kill -0 "$launcher" 2>/dev/null || break; sleep 0.05; done
    kill -9 "${ranks[@]}" 2>/dev/null
    wait "$launcher"
    newest=$(newest_committed "$R")
    if [ -n "$newest" ]; then
      "$MICS" ckpt verify "$newest" >"$T/verify.$c.$i" 2>&1 \
        || { cat "$T/verify.$c.$i" "$T/log.$c.$i"; fail "chain $c round $i: newest committed $newest does not verify"; }
    fi
    echo "[$SECONDS s] chain $c round $i: killed pid $victim; newest committed: ${newest:-none}"
  done
  newest=$(newest_committed "$R")
  [ -n "$newest" ] || fail "chain $c: no checkpoint was ever committed in $rounds runs"
  step=$((10#${newest##*step-}))
  "$MICS" train -n 2 $COMMON --steps $((step + 1)) --ckpt-every 1000 --resume auto --out "$R" >"$T/final.$c.log" 2>&1 \
    || { cat "$T/final.$c.log"; fail "chain $c: the run after the kills failed"; }
  grep -q "resumed from $newest" "$T/final.$c.log" || { cat "$T/final.$c.log"; fail "chain $c: did not resume from $newest"; }
  echo "[$SECONDS s] ok: chain $c: $rounds kills, resumed from $newest"
}
# Section 4 once: 0, or 1 with the reason in $T/v.why (the caller prints the log and fails).
vanish_case() {
  V=$T/vanish
  MICS_DEBUG_CKPT_WRITE_DELAY_MS=1 "$MICS" train -n 2 $COMMON --steps 120 --ckpt-every 1 --keep 1 --out "$V" >"$T/v.log" 2>&1 &
  local run=$! status t0=$SECONDS
  why() { echo "$*" >"$T/v.why"; }
  # Wait for the first commit while the run lives, up to 120 s of wall time: under ctest -j2 on
  # 2 cores, beside the kill chains, the start alone once took over 30 s (a count of polls is
  # no clock when the poller starves too). 120 steps keep the run alive well past its first commit.
  # compgen -G, not ls: with --keep 1 a step is deleted as the next commits, and an ls of two
  # expanded names fails when one goes between the glob and its stat (then this test itself sent
  # the SIGTERM that its earlier retry took for a stray signal: the run had committed steps 1-8).
  committed() { compgen -G "$V/step-*/manifest.json" >/dev/null; }
  while ! committed && kill -0 "$run" 2>/dev/null && ((SECONDS - t0 < 120)); do
    sleep 0.02
  done
  committed ||
    { kill "$run" 2>/dev/null; wait "$run"; why "no checkpoint committed within $((SECONDS - t0)) s"; return 1; }
  for _ in $(seq 50); do rm -rf "$V" 2>/dev/null; [ -e "$V" ] || break; done  # a save may mkdir meanwhile
  kill -0 "$run" 2>/dev/null || { wait "$run"; why "the run ended before --out was removed (make it longer)"; return 1; }
  wait "$run"
  status=$?
  [ "$status" = 1 ] || { why "exit status $status (want 1: the final save failed, no crash)"; return 1; }
  grep -q "$V/step-[0-9]*.*No such file or directory" "$T/v.log" || { why "no error naming the path"; return 1; }
  grep -q "vanished" "$T/v.log" || { why "the hint does not say the directory vanished"; return 1; }
  grep -q "training continues without this one" "$T/v.log" || { why "does not say training continues"; return 1; }
  grep -q "final checkpoint (step 120) could not be saved" "$T/v.log" || { why "the final save's failure"; return 1; }
  grep -qi "segmentation\|core dumped\|terminate called\|internal error" "$T/v.log" && { why "crashed"; return 1; }
  return 0
}
other_faults() {  # sections 2 to 4, one after the other
  # --- 2. a flipped byte ---------------------------------------------------------------------
  F=$T/flip
  "$MICS" train -n 2 $COMMON --steps 4 --ckpt-every 2 --out "$F" >"$T/flip.log" 2>&1 || { cat "$T/flip.log"; fail "flip run"; }
  f=$F/step-00000004/rank-00001.bin  # flip bit 4 of byte 1000
  b=$(od -An -tu1 -j1000 -N1 "$f" | tr -d ' ')
  printf "\\x$(printf %02x $((b ^ 16)))" | dd of="$f" bs=1 seek=1000 conv=notrunc status=none
  out=$("$MICS" ckpt verify "$F/step-00000004" 2>&1) && fail "verify passed a flipped byte: $out"
  echo "$out" | grep -q "digest mismatch in rank-00001.bin chunk" || fail "verify message: $out"
  "$MICS" train -n 2 $COMMON --steps 5 --resume auto --out "$F" >"$T/flip2.log" 2>&1 || { cat "$T/flip2.log"; fail "resume after flip"; }
  grep -q "digest mismatch" "$T/flip2.log" && grep -q "resumed from $F/step-00000002" "$T/flip2.log" \
    || { cat "$T/flip2.log"; fail "resume did not fall back past the flipped byte"; }
  echo "[$SECONDS s] ok: flipped byte caught by verify and by resume"

  # --- 3. disk errors ----------------------------------------------------------------------
  D=$T/disk
  "$MICS" train --strategy ddp $COMMON --steps 3 --ckpt-every 3 --out "$D" >"$T/d1.log" 2>&1 || { cat "$T/d1.log"; fail "disk run 1"; }
  # One rank, in this process (no launcher, no shm rail, which needs large files); its rank file is 1.4 MiB: a 1 MiB file size
  # limit makes every save fail with EFBIG.
  (trap '' XFSZ; ulimit -f 1024; exec "$MICS" train --strategy ddp $COMMON --steps 9 --ckpt-every 3 --resume auto --out "$D") >"$T/d2.log" 2>&1 \
    && { cat "$T/d2.log"; fail "a run whose final checkpoint cannot be written succeeded"; }
  grep -q "File too large" "$T/d2.log" && grep -q "training continues without this one" "$T/d2.log" \
    && grep -q "step: 9" "$T/d2.log" && grep -q "final checkpoint (step 9) could not be saved" "$T/d2.log" \
    || { cat "$T/d2.log"; fail "file size limit: messages"; }
  [ -e "$D/step-00000006" ] && fail "a failed save left $D/step-00000006"
  "$MICS" ckpt verify "$D/step-00000003" >/dev/null || fail "the previous checkpoint was damaged by the failed saves"
  echo "[$SECONDS s] ok: EFBIG mid-run -> clear error, training went on, previous checkpoint intact"
  if [ "$(id -u)" = 0 ] && mkdir -p "$T/full" && mount -t tmpfs -o size=1m tmpfs "$T/full" 2>/dev/null; then
    "$MICS" train -n 2 $COMMON --steps 2 --ckpt-every 1 --out "$T/full/run" >"$T/d3.log" 2>&1 \
      && { cat "$T/d3.log"; fail "a full disk went unnoticed"; }
    grep -q "No space left on device" "$T/d3.log" || { cat "$T/d3.log"; fail "ENOSPC message"; }
    mount -o remount,ro "$T/full"
    # (--metrics elsewhere: the run gets as far as its saves)
    "$MICS" train -n 2 $COMMON --steps 2 --ckpt-every 1 --resume auto --out "$T/full/run" --metrics "$T/d4.jsonl" \
      >"$T/d4.log" 2>&1 && { cat "$T/d4.log"; fail "a read-only disk went unnoticed"; }
    # The first save fails creating its directory, or, when the full-disk run left the
    # leftovers of its failed step-1 save behind, removing them: either is the read-only disk.
    { grep -q "cannot create checkpoint directory $T/full/run/step-00000001: Read-only file system" "$T/d4.log" \
      || grep -q "cannot remove $T/full/run/step-00000001, the leftovers of an unfinished save" "$T/d4.log"; } \
      && grep -q "training continues without this one" "$T/d4.log" \
      && grep -q "final checkpoint (step 2) could not be saved" "$T/d4.log" || { cat "$T/d4.log"; fail "EROFS messages"; }
    umount "$T/full"
    echo "[$SECONDS s] ok: ENOSPC and EROFS on tmpfs"
  fi
  # --- 4. a vanished --out directory -------------------------------------------------------
  vanish_case || { cat "$T/v.log"; fail "vanish: $(cat "$T/v.why")"; }
  echo "[$SECONDS s] ok: --out removed mid-run -> clear error naming the path, training went on to step 120, final save failed"
}

# The two kill chains and sections 2 to 4 (below) go on at once; each reports in its own file.
rounds=$(( (${CKPT_FAULT_ITERATIONS:-20} + 1) / 2 ))
kill_chain 1 "$rounds" >"$T/chain1.out" 2>&1 &
chain1=$!
kill_chain 2 "$rounds" >"$T/chain2.out" 2>&1 &
chain2=$!
other_faults >"$T/others.out" 2>&1 &
others=$!
wait "$chain1"; s1=$?
wait "$chain2"; s2=$?
wait "$others"; s3=$?
cat "$T/chain1.out" "$T/chain2.out" "$T/others.out"
[ "$s1" = 0 ] && [ "$s2" = 0 ] || fail "SIGKILL during saves (see above)"
[ "$s3" = 0 ] || fail "flipped byte, disk errors or vanished directory (see above)"
echo PASS
