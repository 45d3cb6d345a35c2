#!/usr/bin/env bash
# Meshes of one model on 8 ranks as 2 emulated nodes of 4: step time (median over the steps
# after the first) and rank 0's bytes per rail per step from each run's metrics summary,
# beside `mics plan`'s mesh prediction (plan/mesh_plan.hpp) for the host cluster with rails
# measured by `mics bench --json`, its efficiencies calibrated on the pure-MiCS run.
# Every mesh trains the same global batch (16 sequences of 64 tokens). Results: docs/PERFORMANCE.md.
#   bench/mesh.sh [BUILD_DIR] [OUT_DIR]
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$(mktemp -d /tmp/mics-mesh-bench.XXXXXX)}
MICS=$BUILD/mics
export MICS_DATA_DIR=${MICS_DATA_DIR:-$OUT/data} MICS_TIMEOUT_S=${MICS_TIMEOUT_S:-120}
mkdir -p "$OUT"
MODEL=${MODEL:-L4H4C128V256T64}
COMMON="--model $MODEL --seq-len 64 --steps ${STEPS:-20} --samples 0 --eval-batches 1 --strategy mics"

"$MICS" launch -n 4 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_intra.json" >/dev/null
"$MICS" launch -n 4 --nodes 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_inter.json" >/dev/null
HOST="host:$OUT/bench_intra.json,$OUT/bench_inter.json"

# name t s p B S
MESHES="mics_p4:1:1:4:2:1 t2_p2_r2:2:1:2:2:2 s2_p2_r2:1:2:2:2:2 t2_s2_p2:2:2:2:2:4 t4_p2:4:1:2:2:4"
for m in $MESHES; do
  IFS=: read -r name t s p b acc <<<"$m"
  "$MICS" train -n 8 --nodes 2 $COMMON --tensor-parallel "$t" --pipeline-parallel "$s" --partition-size "$p" \
    --micro-batch "$b" --grad-accum "$acc" --out "$OUT/$name" >"$OUT/$name.log" 2>&1
done
"$MICS" plan --calibrate "$OUT/mics_p4" --cluster "$HOST" --json >"$OUT/calibration.json"
EFF=$(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['compute_efficiency'], j['intra_efficiency'], j['inter_efficiency'], j['latency_scale'])" "$OUT/calibration.json")
read -r CE IE XE LS <<<"$EFF"
for m in $MESHES; do
  IFS=: read -r name t s p b acc <<<"$m"
  # --grad-accum is the pure layout's (t = s = 1: 8 ranks x 1 x B = 16); the planner gives a
  # mesh t*s times the micro-batches per data rank, as this script's runs do.
  "$MICS" plan --model "$MODEL" --seq-len 64 --cluster "$HOST" --gpus 8 --micro-batch "$b" --grad-accum 1 \
    --efficiency "$CE" --intra-efficiency "$IE" --inter-efficiency "$XE" --latency-scale "$LS" --mesh-search \
    --json >"$OUT/$name.plan.json"
done

python3 - "$OUT" "$MESHES" "$CE" "$LS" <<'PY'
import json, statistics, sys
out, meshes, ce, ls = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]
print(f"calibrated on mics_p4: compute efficiency {float(ce):.3f}, latency x{float(ls):.1f}")
print("| mesh | t | s | p | r | S x B | step ms (median) | predicted ms | intra MB/step | predicted | inter MB/step | predicted | eval loss |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in meshes:
    name, t, s, p, b, acc = m.split(":")
    t, s, p, b, acc = int(t), int(s), int(p), int(b), int(acc)
    steps, summary = [], {}
    for line in open(f"{out}/{name}/metrics.jsonl"):
        j = json.loads(line)
        if j.get("event") == "step": steps.append(j["step_ms"])
        if j.get("event") == "summary": summary = j
    med = statistics.median(steps[1:] if len(steps) > 1 else steps)
    plan = json.load(open(f"{out}/{name}.plan.json"))["mesh_search"]["layouts"]
    pr = next(x for x in plan if (x["t"], x["s"], x["p"]) == (t, s, p))
    r = 8 // (t * s * p)
    print(f"| {name} | {t} | {s} | {p} | {r} | {acc} x {b} | {med:.1f} | {pr['step_s']*1e3:.1f} | "
          f"{summary['intra_node_bytes_per_step']/1e6:.2f} | {pr['intra_bytes_per_step']/1e6:.2f} | "
          f"{summary['inter_node_bytes_per_step']/1e6:.2f} | {pr['inter_bytes_per_step']/1e6:.2f} | "
          f"{summary.get('eval_loss') or float('nan'):.4f} |")
PY
echo "runs in $OUT"
