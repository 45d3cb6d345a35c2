#!/usr/bin/env python3
"""The markdown summary of a bench/multigpu.sh output folder (issue 10).

    python3 bench/multigpu_summary.py OUT_DIR [--peak-flops 989e12] > OUT_DIR/summary.md

Reads OUT_DIR/plan.tsv and OUT_DIR/rows/*/ (row.json, status, log.txt, metrics.jsonl of mics or
result.json of the peers and benchmarks, gpu_mem.csv, nccl.*.log). Every training row is timed
the same way: the median step after the first 3, tokens/s = GPUs x S x B x T / median step,
FLOPs per token 6N + 6*L*C*T (N without the position table, the peers' and mics' MFU count),
TFLOPS per GPU = tokens/s x FLOPs per token / GPUs, MFU = that / the peak.

Exposed communication is an estimate: the row's median step minus the median step of the
1-GPU run of the same system, model, B, T and S (no communication, the same work per GPU);
neither mics' CUDA path nor the peer measures it directly. Peak memory is nvidia-smi's
memory.used sampled every 250 ms (largest over the GPUs; context, NCCL buffers and allocator
caches included), beside torch's max_memory_allocated for the peers.
"""
import argparse
import csv
import glob
import json
import os
import re
import statistics
import sys

WARMUP_STEPS = 3
OOM = re.compile(r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation", re.I)


def fail(msg):
    sys.stderr.write(f"multigpu_summary.py: {msg}\n")
    sys.exit(2)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}")


def parse_model(spec):
    d = dict(re.findall(r"([LHCVT])(\d+)", spec or ""))
    if not all(k in d for k in "LHCVT"):
        return None
    return {k: int(d[k]) for k in "LHCVT"}


def flops_per_token(m, seq):
    n = m["V"] * m["C"] + m["T"] * m["C"] + 2 * m["C"] + m["L"] * (12 * m["C"] ** 2 + 13 * m["C"])
    return 6.0 * (n - m["T"] * m["C"]) + 6.0 * m["L"] * m["C"] * seq, n


def gpu_mem_peak(path):
    """Largest memory.used (MiB) per GPU index in an nvidia-smi CSV."""
    peaks = {}
    try:
        with open(path) as f:
            for row in csv.reader(f):
                if len(row) != 2:
                    continue
                try:
                    i, v = int(row[0]), float(row[1])
                except ValueError:
                    continue
                peaks[i] = max(peaks.get(i, 0.0), v)
    except FileNotFoundError:
        pass
    return peaks


def mics_steps(path):
    steps, summary = [], None
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    fail(f"{path}: a line is not JSON: {line[:80]}")
                if rec.get("event") == "step":
                    steps.append(float(rec["step_ms"]))
                elif rec.get("event") == "summary":
                    summary = rec
    except FileNotFoundError:
        return None, None
    return steps, summary


def load_row(d):
    meta = read_json(os.path.join(d, "row.json"))
    if meta is None:
        return None
    status_text = open(os.path.join(d, "status")).read().strip() if os.path.exists(os.path.join(d, "status")) else ""
    log = open(os.path.join(d, "log.txt"), errors="replace").read() if os.path.exists(os.path.join(d, "log.txt")) else ""
    r = dict(meta)
    r["dir"] = d
    r["rc"] = int(status_text) if status_text.lstrip("-").isdigit() else None
    if r["rc"] is None:
        r["status"] = "no status (interrupted?)"
    elif r["rc"] == 0:
        r["status"] = "ok"
    elif OOM.search(log):
        r["status"] = "did not fit (out of memory)"
    elif r["rc"] == 124:
        r["status"] = "timed out"
    else:
        r["status"] = f"failed (exit {r['rc']})"
    r["notes"] = []
    peaks = gpu_mem_peak(os.path.join(d, "gpu_mem.csv"))
    used = [peaks[i] for i in sorted(peaks)[: int(meta.get("gpus", 0)) or None]] if peaks else []
    r["mem_gib"] = max(used) / 1024 if used else None
    sysname = meta["system"]
    if sysname in ("mics", "mics-fabric", "mics-bf16g"):
        steps, summary = mics_steps(os.path.join(d, "metrics.jsonl"))
        r["step_ms_list"] = steps or []
        if summary:
            strat = str(summary.get("strategy", ""))
            want = "fabric" if sysname == "mics-fabric" else "nccl"
            if int(meta["gpus"]) > 1 and f"{want} collectives" not in strat:
                r["notes"].append(f"collectives not {want}: '{strat}'")
            r["params"] = summary.get("params")
    elif sysname == "fsdp":
        res = read_json(os.path.join(d, "result.json")) or {}
        r["step_ms_list"] = res.get("step_ms", [])
        r["params"] = res.get("params")
        alloc = res.get("peak_mem_allocated_bytes") or []
        r["alloc_gib"] = max(alloc) / 2**30 if alloc else None
        if res:
            r["notes"].append(f"{res.get('api')}, accum {res.get('accum')}, torch {res.get('torch')}")
    else:
        r["bench"] = read_json(os.path.join(d, "result.json"))
    if int(meta.get("nodes", 1)) > 1:
        logs = glob.glob(os.path.join(d, "nccl.*.log"))
        if logs:
            nets = set()
            for p in logs:
                for m in re.finditer(r"via NET/([A-Za-z]+)", open(p, errors="replace").read()):
                    nets.add(m.group(1))
            r["notes"].append("inter-node via NET/" + "+".join(sorted(nets)) if nets else "NO 'via NET' in the NCCL logs")
    return r


def timing(r, peak):
    steps = r.get("step_ms_list") or []
    if r.get("status") != "ok" or len(steps) <= WARMUP_STEPS:
        return None
    m = parse_model(r.get("model"))
    if m is None:
        return None
    med = statistics.median(steps[WARMUP_STEPS:])
    gpus, S, B, T = int(r["gpus"]), int(r["grad_accum"]), int(r["micro_batch"]), int(r["seq_len"])
    fpt, _ = flops_per_token(m, T)
    tok_s = gpus * S * B * T / (med / 1e3)
    tf = tok_s * fpt / gpus / 1e12
    return {"step_ms": med, "tok_s": tok_s, "tflops": tf, "mfu": tf * 1e12 / peak}


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def system_label(r):
    s, strat, p = r["system"], r["strategy"], r["partition_size"]
    if s == "fsdp":
        return {"full": "FSDP FULL_SHARD", "hybrid": f"FSDP HYBRID_SHARD (shard {p})"}.get(strat, f"FSDP {strat}")
    if s == "mics-fabric":
        return f"mics p={p}, fabric (hierarchical all-gather)"
    if s == "mics-bf16g":
        return f"mics p={p}, bf16 gathers"
    if strat == "single":
        return "mics, one GPU"
    return {"mics": f"mics p={p}", "zero3": "zero3 (mics engine)", "ddp": "ddp (mics engine)"}.get(strat, strat)


def reference_name(r):
    fam = "fsdp-full" if r["system"] == "fsdp" else "mics"
    return f"{r['model_tag']}_1x1_{fam}_S{r['grad_accum']}"


def main(argv):
    ap = argparse.ArgumentParser(description="markdown summary of a bench/multigpu.sh run")
    ap.add_argument("out")
    ap.add_argument("--peak-flops", type=float, default=None, help="per-GPU peak (default: each row's, else 989e12)")
    a = ap.parse_args(argv)
    rows_dir = os.path.join(a.out, "rows")
    if not os.path.isdir(rows_dir):
        fail(f"{rows_dir} does not exist: not a bench/multigpu.sh output folder")
    rows = {}
    for d in sorted(glob.glob(os.path.join(rows_dir, "*"))):
        r = load_row(d)
        if r is not None:
            rows[r["name"]] = r
    plan = []
    if os.path.exists(os.path.join(a.out, "plan.tsv")):
        with open(os.path.join(a.out, "plan.tsv")) as f:
            plan = [line.split("\t")[0] for line in f if line.strip()]
    for r in rows.values():
        peak = a.peak_flops or float(r.get("peak_flops") or 989e12)
        r["peak"] = peak
        r["t"] = timing(r, peak)

    out = []
    w = out.append
    w("# Issue 10: multi-GPU training and collectives\n")
    env = os.path.join(a.out, "env.txt")
    if os.path.exists(env):
        w("Machine (env.txt):\n\n```\n" + "".join(open(env).readlines()[:12]).rstrip() + "\n```\n")
    w(f"Timing: median step after the first {WARMUP_STEPS}; FLOPs per token 6N + 6LCT (N without wpe); "
      "MFU against the peak of each row (--peak-flops, default 989e12 dense bf16). Exposed comm (est.) = "
      "step - the 1-GPU step of the same system and per-GPU batch. Peak memory: nvidia-smi memory.used, "
      "largest GPU (torch allocator peak in brackets for the peers).\n")

    train = [r for r in rows.values() if r["system"] in ("mics", "mics-fabric", "mics-bf16g", "fsdp")]
    w("## Training rows\n")
    w("| row | GPUs | layout | system | S | B x T | step ms | tokens/s | TFLOPS/GPU | MFU | exposed comm ms (est.) | peak mem GiB/GPU | status | notes |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(train, key=lambda r: (r["model_tag"], int(r["grad_accum"]), r["layout"], r["name"])):
        t = r["t"]
        exposed = "-"
        ref = rows.get(reference_name(r))
        if t and ref and ref["t"] and int(r["gpus"]) > 1:
            e = t["step_ms"] - ref["t"]["step_ms"]
            exposed = f"{e:.1f} ({100 * e / t['step_ms']:.0f}%)"
        mem = fmt(r.get("mem_gib"), ".1f")
        if r.get("alloc_gib") is not None:
            mem += f" ({r['alloc_gib']:.1f})"
        w(f"| {r['name']} | {r['gpus']} | {r['layout']} | {system_label(r)} | {r['grad_accum']} | "
          f"{r['micro_batch']} x {r['seq_len']} | {fmt(t and t['step_ms'], '.1f')} | {fmt(t and t['tok_s'], ',.0f')} | "
          f"{fmt(t and t['tflops'], '.1f')} | {fmt(t and 100 * t['mfu'], '.1f')}{'%' if t else ''} | {exposed} | {mem} | "
          f"{r['status']} | {'; '.join(r['notes'])} |")
    w("")

    def tok(name):
        r = rows.get(name)
        return r["t"]["tok_s"] if r and r.get("t") else None

    w("## Ratios (tokens/s, same model, layout and S)\n")
    w("| model | layout | S | mics p=4 / zero3 | mics p=8 / zero3 | mics p=4 / FSDP hybrid | mics p=4 / FSDP full | zero3 / FSDP full | mics p=4 / ddp |")
    w("|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["model_tag"], r["layout"], r["grad_accum"]) for r in train if int(r["gpus"]) == 8})
    for tag, layout, S in keys:
        base = f"{tag}_{layout}_"

        def ratio(x, y):
            a_, b_ = tok(f"{base}{x}_S{S}"), tok(f"{base}{y}_S{S}")
            return f"{a_ / b_:.2f}x" if a_ and b_ else "-"
        w(f"| {tag} | {layout} | {S} | {ratio('mics-p4', 'zero3')} | {ratio('mics-p8', 'zero3')} | "
          f"{ratio('mics-p4', 'fsdp-hybrid')} | {ratio('mics-p4', 'fsdp-full')} | {ratio('zero3', 'fsdp-full')} | "
          f"{ratio('mics-p4', 'ddp')} |")
    w("")

    keys2 = sorted({(r["model_tag"], r["layout"], r["grad_accum"]) for r in train if int(r["gpus"]) == 2})
    if keys2:
        w("## Ratios on two GPUs (tokens/s; 2x1: 2 emulated nodes of 1 GPU, MiCS p=1 keeps each partition on its node)\n")
        w("| model | layout | S | mics / zero3 | mics / FSDP hybrid | mics / FSDP full | zero3 / FSDP full | mics bf16 gathers / FSDP full |")
        w("|---|---|---|---|---|---|---|---|")
        for tag, layout, S in keys2:
            base = f"{tag}_{layout}_"
            mics = "mics-p1" if layout == "2x1" else "mics-p2"

            def ratio2(x, y):
                a_, b_ = tok(f"{base}{x}_S{S}"), tok(f"{base}{y}_S{S}")
                return f"{a_ / b_:.2f}x" if a_ and b_ else "-"
            w(f"| {tag} | {layout} | {S} | {ratio2(mics, 'zero3')} | {ratio2(mics, 'fsdp-hybrid')} | "
              f"{ratio2(mics, 'fsdp-full')} | {ratio2('zero3', 'fsdp-full')} | {ratio2(mics + '-bf16g', 'fsdp-full')} |")
        w("")

    w("## Scaling (S=1, the same B x T per GPU: weak scaling)\n")
    w("| model | system | 1 GPU | 2 GPUs | 4 GPUs | 8 GPUs (1x8) | 8 GPUs (2x4) | efficiency at 8 (1x8 / 2x4) |")
    w("|---|---|---|---|---|---|---|---|")
    for tag in sorted({r["model_tag"] for r in train}):
        for label, names in (("mics (p = min(GPUs, 4))", [f"{tag}_1x1_mics_S1", f"{tag}_1x2_mics-p2_S1", f"{tag}_1x4_mics-p4_S1",
                                                          f"{tag}_1x8_mics-p4_S1", f"{tag}_2x4_mics-p4_S1"]),
                             ("FSDP FULL_SHARD", [f"{tag}_1x1_fsdp-full_S1", f"{tag}_1x2_fsdp-full_S1", f"{tag}_1x4_fsdp-full_S1",
                                                  f"{tag}_1x8_fsdp-full_S1", f"{tag}_2x4_fsdp-full_S1"])):
            v = [tok(n) for n in names]
            one = v[0]
            cells = []
            for n_gpu, x in zip((1, 2, 4, 8, 8), v):
                cells.append("-" if x is None else f"{x:,.0f}" + (f" ({x / (n_gpu * one):.0%})" if one and n_gpu > 1 else ""))
            eff = " / ".join("-" if (x is None or not one) else f"{x / (8 * one):.0%}" for x in v[3:])
            w(f"| {tag} | {label} | " + " | ".join(cells) + f" | {eff} |")
    w("\n(percentages: tokens/s over GPUs x the 1-GPU tokens/s)\n")

    benches = {r["name"]: r for r in rows.values() if r["system"].startswith("bench")}
    if benches:
        w("## Collectives, busbw GB/s (nccl-tests columns; size = the whole array)\n")
        w("`mics bench` has no GPU-buffer mode: its columns are the host (libfabric) collectives of 8 ranks on "
          "this machine's CPUs. The NCCL columns are GPU buffers through torch.distributed in the same run.\n")
        cols = [(n, r) for n, r in sorted(benches.items()) if r.get("bench")]
        table = {}
        for n, r in cols:
            for res in r["bench"].get("results", []):
                table.setdefault((res["op"], int(res["bytes"])), {})[n] = res["busbw_gbps"]
        if table:
            w("| op | bytes | " + " | ".join(n for n, _ in cols) + " |")
            w("|---|---|" + "---|" * len(cols))
            for (op, b) in sorted(table):
                w(f"| {op} | {b} | " + " | ".join(fmt(table[(op, b)].get(n), ".2f") for n, _ in cols) + " |")
        for n, r in sorted(benches.items()):
            if not r.get("bench"):
                w(f"- {n}: {r['status']} (no result.json; see rows/{n}/log.txt)")
        w("")

    missing = [n for n in plan if n not in rows]
    if missing:
        w("## Not run\n")
        w(", ".join(missing) + "\n")
    failed = [r for r in rows.values() if r["status"] != "ok"]
    if failed:
        w("## Rows that did not finish\n")
        for r in sorted(failed, key=lambda r: r["name"]):
            w(f"- {r['name']}: {r['status']} (rows/{os.path.basename(r['dir'])}/log.txt)")
        w("")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
