#!/usr/bin/env python3
"""Summarise bench/collectives.sh's JSON files as the markdown tables of docs/PERFORMANCE.md."""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


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
print("| ranks | op | size | mics | ceiling | mics/ceiling | Open MPI | Open MPI (malloc tuned) | mics/Open MPI |")
print("|---|---|---|---|---|---|---|---|---|")
for n in (2, 4):
    m, o, w = load(f"mics_n{n}.json"), load(f"ompi_n{n}.json"), load(f"ompi_warm_n{n}.json")
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        mr, orr, wr = rows(m, op), rows(o, op), rows(w, op)
        for size in sorted(mr):
            mb = busbw(mr[size])
            c = shm.get(size)
            ob = busbw(orr[size]) if size in orr else None
            wb = busbw(wr[size]) if size in wr else None
            fmt = lambda v: f"{v:.2f}" if v is not None else "-"
            print(f"| {n} | {op} | {mib(size)} | {mb:.2f} | {fmt(c)} | "
                  f"{(mb / c * 100):.0f}% | {fmt(ob)} | {fmt(wb)} | "
                  f"{(mb / ob):.2f}x |" if c and ob else
                  f"| {n} | {op} | {mib(size)} | {mb:.2f} | {fmt(c)} | - | {fmt(ob)} | {fmt(wb)} | - |")

print("\n### 8-byte all-reduce latency, one node (us)\n")
print("| ranks | mics | Open MPI |")
print("|---|---|---|")
for n in (2, 4):
    m, o = load(f"mics_lat_n{n}.json"), load(f"ompi_lat_n{n}.json")
    if m and o:
        print(f"| {n} | {m['results'][0]['time_us']:.2f} | {o['results'][0]['time_us']:.2f} |")

print("\n### Across emulated nodes (tcp;ofi_rxm between nodes), all-gather\n")
print("| layout | algo | size | busbw GB/s | tcp pingpong | busbw/ceiling | inter-node bytes per node | formula |")
print("|---|---|---|---|---|---|---|---|")
for name, layout, algo in (("mics_1x2_ring.json", "2 nodes x 1", "ring"),
                           ("mics_2x2_ring.json", "2 nodes x 2", "ring"),
                           ("mics_2x2_hier.json", "2 nodes x 2", "hier")):
    d = load(name)
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
        ratio = f"{r['busbw_gbps'] / c * 100:.0f}%" if c else "-"
        print(f"| {layout} | {r['algo']} | {mib(size)} | {r['busbw_gbps']:.2f} | {c if c is None else f'{c:.2f}'} | {ratio} | "
              f"{r['inter_bytes_per_node']:.0f} | {formula} |")
