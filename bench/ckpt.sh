#!/usr/bin/env bash
# Checkpoint save bandwidth vs the filesystem's sequential write bandwidth (dd, fdatasync),
# and the step stall of an async save vs a blocking one, for a ~2.7 GB checkpoint
# (L8 C1536: 226M params x 12 bytes: params + 2 AdamW moments), one rank (ddp).
# Usage: bench/ckpt.sh [MICS_BINARY] [DIR on the filesystem to measure]
set -eu
MICS=${1:-build/mics}
DIR=${2:-/tmp/mics-ckpt-bench}
rm -rf "$DIR"; mkdir -p "$DIR"
MODEL="--model L8H12C1536V256T64 --micro-batch 1 --seq-len 64 --samples 0 --eval-batches 1 --strategy ddp"
echo "== dd: 2.5 GiB sequential write, fdatasync"
dd if=/dev/zero of="$DIR/dd.bin" bs=64M count=40 conv=fdatasync 2>&1 | tail -1
rm -f "$DIR/dd.bin"
echo "== blocking save (--ckpt-sync)"
"$MICS" train -n 1 $MODEL --steps 2 --ckpt-every 1 --ckpt-sync --out "$DIR/sync" 2>&1 | grep -E "checkpoint|step:" 
rm -rf "$DIR/sync"
echo "== async save"
"$MICS" train -n 1 $MODEL --steps 4 --ckpt-every 2 --out "$DIR/async" 2>&1 | grep -E "checkpoint|step:"
rm -rf "$DIR"
