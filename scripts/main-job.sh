#!/usr/bin/env bash
# The main job of `make run` until the trainer lands: a 4-rank, 2-emulated-node benchmark of
# all-reduce and all-gather with validation, over the shm rail (same node) and the network
# rail (across nodes), then the hierarchical all-gather beside the flat ring at 16 MiB to show
# the inter-node bytes MiCS saves. Exits non-zero if any value is wrong.
set -euo pipefail
MICS=${1:-build/mics}
OUT=${MICS_RUN_DIR:-out/main-job}
mkdir -p "$OUT"
echo "== mics main job: 4 ranks as 2 emulated nodes (2 per node) =="
"$MICS" launch -n 4 --nodes 2 -- "$MICS" bench --op all_reduce,all_gather \
  -b 8 -e 16M -f 8 --warmup 3 --iters 10 --check --json "$OUT/bench.json"
echo
echo "== all-gather of 16 MiB: flat ring vs MiCS hierarchical (inter-node bytes per node) =="
for algo in ring hier; do
  "$MICS" launch -n 4 --nodes 2 --no-prefix -- "$MICS" bench --op all_gather -b 16M -e 16M \
    --warmup 2 --iters 5 --check --algo "$algo" --json "$OUT/allgather-$algo.json" | grep -v '^#'
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
ring = json.load(open(f"{out}/allgather-ring.json"))["results"][0]
hier = json.load(open(f"{out}/allgather-hier.json"))["results"][0]
M = ring["bytes"]
print(f"inter-node bytes per node: flat ring {ring['inter_bytes_per_node']:.0f} "
      f"(formula (p-1)/p*M = {3 * M // 4}), hierarchical {hier['inter_bytes_per_node']:.0f} "
      f"(formula (k-1)/k*M = {M // 2})")
PY
echo "results in $OUT/"
