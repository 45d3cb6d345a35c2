#!/usr/bin/env python3
"""NCCL collectives on GPU buffers through torch.distributed, in nccl-tests' columns.

`mics bench` times the host (libfabric) collectives only; this gives the NCCL figures on the
same GPUs in the same run (bench/multigpu.sh). Launched by torchrun, one rank per GPU:

    torchrun --standalone --nproc_per_node 8 bench/peers/torch_nccl_bench.py --json nccl.json
    torchrun --standalone --nproc_per_node 8 bench/peers/torch_nccl_bench.py --nodes 2 ...

size is the whole array (all-gather's output, reduce-scatter's and all-reduce's input), as in
nccl-tests and `mics bench`; time is the slowest rank's mean per iteration of the fastest of
--runs blocks; busbw = algbw * (n-1)/n for all-gather and reduce-scatter, * 2(n-1)/n for
all-reduce. --nodes K: rank r is on emulated node r // (n/K) and gets NCCL_HOSTID for it, so
NCCL routes inter-node traffic over its NET transport. The JSON has the fields of
`mics bench --json` (op, bytes, count, algo, time_us, algbw_gbps, busbw_gbps).
"""
import argparse
import json
import os
import sys
import time

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text):
    t = text.strip().upper().rstrip("B")
    unit = t[-1] if t and t[-1] in UNITS else ""
    num = t[:-1] if unit else t
    if not num.isdigit() or int(num) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 8, 1K, 64M")
    return int(num) * UNITS[unit]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", default="all_gather,reduce_scatter,all_reduce", help="comma list of all_gather, reduce_scatter, all_reduce")
    p.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("1M"))
    p.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("256M"))
    p.add_argument("-f", "--stepfactor", type=float, default=4)
    p.add_argument("-w", "--warmup", type=int, default=5)
    p.add_argument("-n", "--iters", type=int, default=20)
    p.add_argument("-r", "--runs", type=int, default=3)
    p.add_argument("-d", "--dtype", choices=["float", "bf16"], default="float")
    p.add_argument("--nodes", type=int, default=1, help="emulated nodes, each with its own NCCL_HOSTID")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    ops = a.op.split(",")
    for op in ops:
        if op not in ("all_gather", "reduce_scatter", "all_reduce"):
            p.error(f"unknown op '{op}'")
    if a.stepfactor <= 1 or a.minbytes > a.maxbytes or a.iters < 1 or a.runs < 1 or a.warmup < 0:
        p.error("need -f > 1, -b <= -e, -n >= 1, -r >= 1, -w >= 0")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if a.nodes < 1 or world % a.nodes:
        p.error(f"{world} ranks do not split into --nodes {a.nodes}")
    if a.nodes > 1:
        os.environ["NCCL_HOSTID"] = f"emulated-node{rank // (world // a.nodes)}"
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if "RANK" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 2000))

    import torch
    import torch.distributed as dist
    if not torch.cuda.is_available():
        raise SystemExit("torch_nccl_bench.py: no CUDA device visible")
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    dtype = torch.float32 if a.dtype == "float" else torch.bfloat16
    esize = 4 if a.dtype == "float" else 2
    n = world

    sizes, s = [], a.minbytes
    while s <= a.maxbytes:
        sizes.append(s)
        s = int(s * a.stepfactor)

    rows = []
    if rank == 0:
        print(f"# NCCL through torch.distributed {torch.__version__}: {n} ranks, {a.nodes} node(s), dtype {a.dtype}")
        print(f"# {'op':>14} {'size':>12} {'count':>12} {'time(us)':>10} {'algbw':>8} {'busbw':>8}")
    for op in ops:
        for size in sizes:
            count = size // esize // n * n  # the whole array, split evenly
            if count == 0:
                continue
            block = count // n
            if op == "all_gather":
                src, dst = torch.ones(block, dtype=dtype, device=dev), torch.empty(count, dtype=dtype, device=dev)
                call = lambda: dist.all_gather_into_tensor(dst, src)
            elif op == "reduce_scatter":
                src, dst = torch.ones(count, dtype=dtype, device=dev), torch.empty(block, dtype=dtype, device=dev)
                call = lambda: dist.reduce_scatter_tensor(dst, src)
            else:
                src = torch.ones(count, dtype=dtype, device=dev)
                call = lambda: dist.all_reduce(src)
            for _ in range(a.warmup):
                call()
            torch.cuda.synchronize()
            best = float("inf")
            for _ in range(a.runs):
                dist.barrier()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(a.iters):
                    call()
                torch.cuda.synchronize()
                t = torch.tensor([(time.perf_counter() - t0) / a.iters], dtype=torch.float64, device=dev)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                best = min(best, t.item())
            nbytes = count * esize
            algbw = nbytes / best / 1e9
            busbw = algbw * (2 * (n - 1) / n if op == "all_reduce" else (n - 1) / n)
            rows.append({"op": op, "bytes": nbytes, "count": count, "algo": "nccl", "time_us": best * 1e6,
                         "algbw_gbps": algbw, "busbw_gbps": busbw})
            if rank == 0:
                print(f"  {op:>14} {nbytes:>12} {count:>12} {best * 1e6:>10.1f} {algbw:>8.2f} {busbw:>8.2f}", flush=True)
    if rank == 0 and a.json:
        v = torch.cuda.nccl.version()
        with open(a.json, "w") as f:
            json.dump({"world_size": n, "nodes": a.nodes, "backend": "nccl (torch.distributed)",
                       "nccl": ".".join(map(str, v)) if isinstance(v, tuple) else str(v),
                       "torch": torch.__version__, "dtype": a.dtype, "results": rows}, f, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
