#!/usr/bin/env bash
# Meshes of one model on 8 ranks as 2 emulated nodes of 4: step time (median over the steps
# after the first) and rank 0's bytes per rail per step from each run's metrics summary,
# beside `mics plan`'s mesh prediction (plan/mesh_plan.hpp) for the host cluster with rails
# measured by `mics bench --json`, its compute efficiency and host hop wait (the wait of a
# ring hop for a core, docs/PLANNING.md) calibrated on the pure-MiCS run by `mics plan
# --calibrate`, or given: CALIBRATION=FILE (a `mics plan --calibrate --json` output) or
# CE=<compute efficiency> HOP_US=<host hop wait, us>. The sequence-parallel meshes are
# measured beside their plain counterparts: step time and the summary's kept activation bytes
# per rank, with the planner's prediction of both.
# Every mesh trains the same global batch (16 sequences of 64 tokens). Results: docs/PERFORMANCE.md.
#   bench/mesh.sh [BUILD_DIR] [OUT_DIR]
# CALIBRATE_ONLY=1 with an OUT_DIR of earlier runs: only the calibration and the table, with this build.
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$(mktemp -d /tmp/mics-mesh-bench.XXXXXX)}
MICS=$BUILD/mics
export MICS_DATA_DIR=${MICS_DATA_DIR:-$OUT/data} MICS_TIMEOUT_S=${MICS_TIMEOUT_S:-120}
mkdir -p "$OUT"
MODEL=${MODEL:-L4H4C128V256T64}
COMMON="--model $MODEL --seq-len 64 --steps ${STEPS:-20} --samples 0 --eval-batches 1 --strategy mics"

if [ "${CALIBRATE_ONLY:-0}" != 1 ]; then
  "$MICS" launch -n 4 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_intra.json" >/dev/null
  "$MICS" launch -n 4 --nodes 2 -- "$MICS" bench --op all_gather -b 64K -e 4M -f 4 -n 5 -w 2 --json "$OUT/bench_inter.json" >/dev/null
fi
HOST="host:$OUT/bench_intra.json,$OUT/bench_inter.json"

# name t s p B S [extra flags, comma-separated]
MESHES="mics_p4:1:1:4:2:1 t2_p2_r2:2:1:2:2:2 s2_p2_r2:1:2:2:2:2 t2_s2_p2:2:2:2:2:4 t4_p2:4:1:2:2:4"
MESHES="$MESHES t2_p2_r2_sp:2:1:2:2:2:--sequence-parallel t2_s2_p2_sp:2:2:2:2:4:--sequence-parallel"
MESHES="$MESHES t4_p2_sp:4:1:2:2:4:--sequence-parallel"
for m in $MESHES; do
  [ "${CALIBRATE_ONLY:-0}" = 1 ] && break
  IFS=: read -r name t s p b acc extra <<<"$m"
  "$MICS" train -n 8 --nodes 2 $COMMON --tensor-parallel "$t" --pipeline-parallel "$s" --partition-size "$p" \
    --micro-batch "$b" --grad-accum "$acc" ${extra//,/ } --out "$OUT/$name" >"$OUT/$name.log" 2>&1
done
if [[ -n "${CE:-}" && -n "${HOP_US:-}" ]]; then
  python3 -c "import json,sys; print(json.dumps({'compute_efficiency': float(sys.argv[1]), 'intra_efficiency': 0.8, 'inter_efficiency': 0.8, 'latency_scale': 1.0, 'host_hop_s': float(sys.argv[2]) * 1e-6}))" \
    "$CE" "$HOP_US" >"$OUT/calibration.json"
elif [[ -n "${CALIBRATION:-}" ]]; then
  cp "$CALIBRATION" "$OUT/calibration.json"
else
  "$MICS" plan --calibrate "$OUT/mics_p4" --cluster "$HOST" --json >"$OUT/calibration.json"
fi
EFF=$(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['compute_efficiency'], j['intra_efficiency'], j['inter_efficiency'], j['latency_scale'], j.get('host_hop_s', 0) * 1e6)" "$OUT/calibration.json")
read -r CE IE XE LS HOP <<<"$EFF"
for m in $MESHES; do
  IFS=: read -r name t s p b acc extra <<<"$m"
  # --grad-accum is the pure layout's (t = s = 1: 8 ranks x 1 x B = 16); the planner gives a
  # mesh t*s times the micro-batches per data rank, as this script's runs do. Predictions with
  # the calibrated hop wait, and (for comparison with the earlier table) without it.
  "$MICS" plan --model "$MODEL" --seq-len 64 --cluster "$HOST" --gpus 8 --micro-batch "$b" --grad-accum 1 \
    --efficiency "$CE" --intra-efficiency "$IE" --inter-efficiency "$XE" --latency-scale "$LS" --host-hop-us "$HOP" \
    --mesh-search --json >"$OUT/$name.plan.json"
  "$MICS" plan --model "$MODEL" --seq-len 64 --cluster "$HOST" --gpus 8 --micro-batch "$b" --grad-accum 1 \
    --efficiency "$CE" --intra-efficiency "$IE" --inter-efficiency "$XE" --latency-scale "$LS" --host-hop-us 0 \
    --mesh-search --json >"$OUT/$name.plan_nohop.json"
done

python3 - "$OUT" "$MESHES" "$CE" "$LS" "$HOP" <<'PY'
import json, statistics, sys
out, meshes, ce, ls, hop = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5]
print(f"calibration: compute efficiency {float(ce):.3f}, latency x{float(ls):.1f}, host hop wait {float(hop):.0f} us")
print("| mesh | t | s | p | r | S x B | step ms (median) | predicted ms | no hop wait | intra MB/step | predicted | inter MB/step | predicted | activations KiB/micro-batch | predicted | LN regions KiB | eval loss |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in meshes:
    name, t, s, p, b, acc = m.split(":")[:6]
    t, s, p, b, acc = int(t), int(s), int(p), int(b), int(acc)
    sp = "--sequence-parallel" in m
    steps, summary = [], {}
    for line in open(f"{out}/{name}/metrics.jsonl"):
        j = json.loads(line)
        if j.get("event") == "step": steps.append(j["step_ms"])
        if j.get("event") == "summary": summary = j
    med = statistics.median(steps[1:] if len(steps) > 1 else steps)
    def pick(path):
        layouts = json.load(open(path))["mesh_search"]["layouts"]
        return next(x for x in layouts
                    if (x["t"], x["s"], x["p"], x.get("sequence_parallel", False)) == (t, s, p, sp))
    pr, nohop = pick(f"{out}/{name}.plan.json"), pick(f"{out}/{name}.plan_nohop.json")
    r = 8 // (t * s * p)
    mesh = summary.get("mesh", {})
    # Per micro-batch (the mesh's 1F1B stage 0 holds min(S, s) of them); the LayerNorm-region
    # part is the mesh trainer's (the plain trainer does not split it out).
    act = summary.get("activation_bytes") or 0
    ln = mesh["layernorm_region_bytes"] / mesh["micro_batches_in_flight"] if mesh else None
    fmt = lambda v, scale, digits: f"{v * scale:.{digits}f}"
    print(f"| {name} | {t} | {s} | {p} | {r} | {acc} x {b} | {med:.1f} | {fmt(pr['step_s'], 1e3, 1)} | "
          f"{fmt(nohop['step_s'], 1e3, 1)} | {summary['intra_node_bytes_per_step']/1e6:.2f} | "
          f"{fmt(pr['intra_bytes_per_step'], 1e-6, 2)} | {summary['inter_node_bytes_per_step']/1e6:.2f} | "
          f"{fmt(pr['inter_bytes_per_step'], 1e-6, 2)} | {act/1024:.0f} | "
          f"{pr['activation_bytes'] / s / 1024:.0f} | {'-' if ln is None else f'{ln/1024:.0f}'} | "
          f"{summary.get('eval_loss') or float('nan'):.4f} |")
PY
echo "runs in $OUT"
