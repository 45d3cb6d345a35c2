#!/usr/bin/env python3
"""Summarise bench/collectives.sh's JSON files as the markdown tables of docs/PERFORMANCE.md."""
import json
import os
import sys

out = sys.argv[1]


def load_one(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


def load(name):
    """NAME.json, or the best of its rounds NAME_r1.json, NAME_r2.json, ... (collectives.sh
    ROUNDS): per (op, size) the row with the highest busbw, or for the latency files the lowest
    time. The rounds are interleaved with the peers', so each system gets its best minute."""
    single = load_one(name)
    if single:
        return single
    stem = name[:-len(".json")]
    rounds = []
    k = 1
    while (doc := load_one(f"{stem}_r{k}.json")) is not None:
        rounds.append(doc)
        k += 1
    if not rounds:
        return None
    best = dict(rounds[0])
    key_size = "bytes" if "world_size" in best else "size"
    chosen = {}
    for doc in rounds:
        for r in doc["results"]:
            key = (r["op"], r[key_size])
            old = chosen.get(key)
            if old is None or (busbw(r) or 0) > (busbw(old) or 0) or \
                    ((busbw(r) or 0) == (busbw(old) or 0) and r["time_us"] < old["time_us"]):
                chosen[key] = r
    best["results"] = list(chosen.values())
    best["rounds"] = len(rounds)
    return best


def rows(doc, op):
    if not doc:
        return {}
    key_size = "bytes" if "world_size" in doc else "size"
    found = {}
    for r in doc["results"]:
        name = r["op"]
        if name == "reduce_scatter_v":
            name = "reduce_scatter"
        if name == op:
            found[r[key_size]] = r
    return found


def busbw(r):
    return r.get("busbw_gbps", r.get("busbw"))


ceil = load("ceilings.json")
shm = {p["size"]: p["best_gbps"] for p in ceil["pingpong"] if p["provider"] == "shm"} if ceil else {}
tcp = {p["size"]: p["best_gbps"] for p in ceil["pingpong"] if p["provider"] == "tcp;ofi_rxm"} if ceil else {}
mib = lambda b: f"{b >> 20}M" if b >= 1 << 20 else f"{b}B"

print("### Same node (shm), busbw GB/s; ratios vs the shm pingpong ceiling and vs Open MPI\n")
print("sendrecv: `mics bench --op sendrecv` on the same ranks at the ring's step message (size/n): every "
      "rank sending to the next and receiving from the previous at once, one ring step with both "
      "directions of every link busy. Each system's best of the interleaved rounds.\n")
print("| ranks | op | size | mics | ceiling | mics/ceiling | sendrecv | mics/sendrecv | Open MPI | "
      "Open MPI (malloc tuned) | mics/Open MPI |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
fmt = lambda v: f"{v:.2f}" if v is not None else "-"
pct = lambda a, b: f"{a / b * 100:.0f}%" if a is not None and b else "-"
for n in (2, 4):
    m, o, w = load(f"mics_n{n}.json"), load(f"ompi_n{n}.json"), load(f"ompi_warm_n{n}.json")
    sr = rows(load(f"mics_sr_n{n}.json"), "sendrecv")
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        mr, orr, wr = rows(m, op), rows(o, op), rows(w, op)
        for size in sorted(mr):
            mb = busbw(mr[size])
            c = shm.get(size)
            x = busbw(sr[size // n]) if size // n in sr else None
            ob = busbw(orr[size]) if size in orr else None
            wb = busbw(wr[size]) if size in wr else None
            vs_ompi = f"{mb / ob:.2f}x" if ob else "-"
            print(f"| {n} | {op} | {mib(size)} | {mb:.2f} | {fmt(c)} | {pct(mb, c)} | {fmt(x)} | {pct(mb, x)} | "
                  f"{fmt(ob)} | {fmt(wb)} | {vs_ompi} |")

print("\n### 8-byte all-reduce latency, one node (us)\n")
print("| ranks | mics | Open MPI |")
print("|---|---|---|")
for n in (2, 4):
    m, o = load(f"mics_lat_n{n}.json"), load(f"ompi_lat_n{n}.json")
    if m and o:
        print(f"| {n} | {m['results'][0]['time_us']:.2f} | {o['results'][0]['time_us']:.2f} |")

print("\n### Across emulated nodes (tcp;ofi_rxm between nodes), all-gather\n")
print("| layout | algo | size | busbw GB/s | tcp pingpong | busbw/ceiling | sendrecv | busbw/sendrecv | "
      "inter-node bytes per node | formula |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, layout, algo in (("mics_1x2_ring.json", "2 nodes x 1", "ring"),
                           ("mics_2x2_ring.json", "2 nodes x 2", "ring"),
                           ("mics_2x2_hier.json", "2 nodes x 2", "hier")):
    d = load(name)
    sr = rows(load("mics_sr_1x2.json" if layout == "2 nodes x 1" else "mics_sr_2x2.json"), "sendrecv")
    if not d:
        continue
    for r in d["results"]:
        size = r["bytes"]
        p = d["world_size"]
        k = d["nodes"]
        formula = (k - 1) * size // k if algo == "hier" else (p - 1) * size // p
        if layout == "2 nodes x 1":
            formula = size // 2
        c = tcp.get(size)
        x = busbw(sr[size // p]) if size // p in sr else None
        print(f"| {layout} | {r['algo']} | {mib(size)} | {r['busbw_gbps']:.2f} | {fmt(c)} | {pct(r['busbw_gbps'], c)} | "
              f"{fmt(x)} | {pct(r['busbw_gbps'], x)} | {r['inter_bytes_per_node']:.0f} | {formula} |")
