#!/usr/bin/env python3
"""PyTorch FSDP peer for issue 10: a GPT-2-style model with mics' shapes, trained under FSDP.

Launched by torchrun (or run plainly for one process):

    torchrun --standalone --nproc-per-node 8 bench/peers/torch_fsdp.py \
        --model L24H16C2048V50304T2048 --micro-batch 4 --seq-len 2048 --grad-accum 4 \
        --sharding hybrid --shard-size 4 --steps 15 --json out.json

The model has exactly the parameters of mics' GPT (src/model/gpt_layers.hpp): wte [V, C],
wpe [T, C], per block ln1, qkv (C x 3C + bias), proj, ln2, fc (C x 4C), fcproj (4C x C), all with
biases, final LayerNorm and a head tied to wte: 12C^2 + 13C per block, V*C + T*C + 2C outside.
Compute is bf16 with fp32 master weights (FSDP mixed precision: bf16 parameters for the
GEMMs, fp32 gradient reduction by default, fp32 AdamW state), random tokens, AdamW.

FLOPs per token are the peers' 6N + 6*L*C*T with N without the position table, as in
`mics train --device cuda` and bench/peers/torch_gpt2.py. Writes one JSON object (--json) and
prints one summary line; rank 0 only.

Sharding: full (FULL_SHARD over all ranks), hybrid (HYBRID_SHARD: shard groups of
--shard-size contiguous ranks, replicated world/shard-size times; MiCS' partition groups) or
ddp (no FSDP: DistributedDataParallel, fp32 parameters, bf16 autocast; no_sync while accumulating).
APIs: fsdp2 (torch.distributed.fsdp.fully_shard, torch >= 2.6; 2.4-2.5 under _composable) or
fsdp1 (FullyShardedDataParallel); auto picks fsdp2 where it exists.

Gradient accumulation (--accum):
  sync     every micro-step reduces gradients fully (FSDP's default).
  rs-only  hybrid + fsdp2: reduce-scatter inside the shard group every micro-step, all-reduce
           across replicas only at the last one (set_requires_all_reduce(False)): MiCS' 2-hop.
  no-sync  no gradient communication until the last micro-step (fsdp1 no_sync(), fsdp2
           set_requires_gradient_sync(False)): unsharded gradients are kept meanwhile.
  auto     rs-only for hybrid on fsdp2, else sync.

--nodes K (emulated nodes): rank r belongs to node r // (world/K), and NCCL_HOSTID is set to
that node's name before the process group starts, so NCCL treats the nodes as different hosts
and moves inter-node traffic through its NET transport.
"""
import argparse
import inspect
import json
import math
import os
import re
import resource
import statistics
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a size like L24H16C2048V50304T2048 (L layers, H heads, "
                   "C channels, V vocab, T context), or a preset: gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1.5b")
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per rank and micro-step (B)")
    p.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (0: the model's context)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step (S)")
    p.add_argument("--steps", type=int, default=15, help="optimizer steps")
    p.add_argument("--warmup-steps", type=int, default=3, help="first steps left out of the timing")
    p.add_argument("--sharding", choices=["full", "hybrid", "ddp"], default="full",
                   help="full: FULL_SHARD; hybrid: HYBRID_SHARD; ddp: DistributedDataParallel with bf16 autocast "
                   "(no sharding: the reference where it fits)")
    p.add_argument("--shard-size", type=int, default=0, help="hybrid: ranks per shard group (0: the ranks per node)")
    p.add_argument("--nodes", type=int, default=1, help="emulated nodes (contiguous rank blocks), each its own NCCL_HOSTID")
    p.add_argument("--api", choices=["auto", "fsdp1", "fsdp2"], default="auto")
    p.add_argument("--accum", choices=["auto", "sync", "rs-only", "no-sync"], default="auto")
    p.add_argument("--reduce-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="dtype of the gradient reduction (mics reduces in fp32)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: gloo, for a smoke test of the logic")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clipping (0: off)")
    p.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) (default: torch's default, foreach)")
    p.add_argument("--peak-flops", type=float, default=989e12, help="per-GPU peak for MFU (default: H100/H200 dense bf16)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default="", help="write the result here (rank 0)")
    a = p.parse_args(argv)
    for name in ("micro_batch", "grad_accum", "steps", "nodes"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup_steps < 0 or a.warmup_steps >= a.steps:
        p.error(f"--warmup-steps {a.warmup_steps} must be in [0, --steps {a.steps})")
    if a.peak_flops <= 0:
        p.error("--peak-flops must be positive")
    return a


PRESETS = {"gpt2-124m": (12, 12, 768, 50257, 1024), "gpt2-350m": (24, 16, 1024, 50257, 1024),
           "gpt2-774m": (36, 20, 1280, 50257, 1024), "gpt2-1.5b": (48, 25, 1600, 50257, 1024)}


def parse_model(text):
    """(L, H, C, V, T) of a preset or of a free size in mics' spelling (letters in any order)."""
    if text in PRESETS:
        return PRESETS[text]
    parts = re.findall(r"([LHCVT])(\d+)", text)
    if not parts or "".join(k + v for k, v in parts) != text:
        raise SystemExit(f"torch_fsdp.py: --model '{text}' is neither a preset ({', '.join(PRESETS)}) "
                         "nor a size like L24H16C2048V50304T2048")
    d = dict(parts)
    missing = [k for k in "LHCVT" if k not in d]
    if missing:
        raise SystemExit(f"torch_fsdp.py: --model '{text}' lacks {', '.join(missing)}")
    L, H, C, V, T = (int(d[k]) for k in "LHCVT")
    if min(L, H, C, V, T) < 1 or C % H:
        raise SystemExit(f"torch_fsdp.py: --model '{text}': sizes must be >= 1 and C divisible by H")
    return L, H, C, V, T


def mics_param_count(L, C, V, T):
    return V * C + T * C + 2 * C + L * (12 * C * C + 13 * C)


def flops_per_token(L, C, V, ctx, seq):
    return 6.0 * (mics_param_count(L, C, V, ctx) - ctx * C) + 6.0 * L * C * seq


def build_model(torch, L, H, C, V, ctx):
    nn, F = torch.nn, torch.nn.functional
    have_sdpa = hasattr(F, "scaled_dot_product_attention")

    def attention(q, k, v):  # [B, H, T, D], causal
        if have_sdpa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        t = q.shape[-2]
        s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        return torch.softmax(s.masked_fill(mask, float("-inf")).float(), dim=-1).to(v.dtype) @ v

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
            y = attention(q, k, v).transpose(1, 2).contiguous().view(b, t, C)
            x = x + self.proj(y)
            return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(ctx, C)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.lnf = nn.LayerNorm(C)
            self.head = nn.Linear(C, V, bias=False)
            self.head.weight = self.wte.weight  # tied, as in mics

        def forward(self, idx, tgt):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            logits = self.head(self.lnf(x))
            return F.cross_entropy(logits.view(-1, V).float(), tgt.view(-1))

    return GPT(), Block


def main(argv):
    a = parse_args(argv)
    L, H, C, V, ctx = parse_model(a.model)
    T = a.seq_len or ctx
    if T > ctx:
        raise SystemExit(f"torch_fsdp.py: --seq-len {T} is longer than the model's context {ctx}")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world % a.nodes:
        raise SystemExit(f"torch_fsdp.py: {world} ranks do not split into --nodes {a.nodes}")
    per_node = world // a.nodes
    node = rank // per_node
    if a.nodes > 1:
        # Must precede the first NCCL call: NCCL reads it when it computes the host hash.
        os.environ["NCCL_HOSTID"] = f"emulated-node{node}"
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    shard = a.shard_size or per_node
    if a.sharding == "hybrid" and (shard < 1 or world % shard):
        raise SystemExit(f"torch_fsdp.py: --shard-size {shard} does not divide the {world} ranks")
    if a.sharding == "full":
        shard = world
    elif a.sharding == "ddp":
        shard = 1

    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:  # a plain single process: a one-rank group of its own
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 2000))
    if a.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("torch_fsdp.py: no CUDA device visible (use --device cpu for a CPU smoke test)")
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"torch_fsdp.py: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs visible")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        kw = {"device_id": device} if "device_id" in inspect.signature(dist.init_process_group).parameters else {}
        dist.init_process_group("nccl", rank=rank, world_size=world, **kw)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world)

    api = a.api
    fully_shard = MixedPrecisionPolicy = None
    if a.sharding == "ddp":
        api = "ddp"
    elif api in ("auto", "fsdp2"):
        try:
            from torch.distributed.fsdp import fully_shard, MixedPrecisionPolicy
        except Exception:  # ImportError, or a torch whose fsdp package does not import at all
            try:
                from torch.distributed._composable.fsdp import fully_shard, MixedPrecisionPolicy
            except Exception:
                if api == "fsdp2":
                    raise SystemExit(f"torch_fsdp.py: --api fsdp2 needs torch >= 2.4 (this is {torch.__version__})")
        api = "fsdp2" if fully_shard is not None else "fsdp1"
    accum = a.accum
    if accum == "auto":
        accum = "rs-only" if (a.sharding == "hybrid" and api == "fsdp2" and shard < world) else \
            "no-sync" if api == "ddp" else "sync"
    if accum == "rs-only" and (api != "fsdp2" or a.sharding != "hybrid"):
        raise SystemExit("torch_fsdp.py: --accum rs-only needs --sharding hybrid and the fsdp2 API "
                         "(fsdp1 can only skip all gradient communication: --accum no-sync)")

    torch.manual_seed(a.seed)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    reduce_dtype = torch.float32 if a.reduce_dtype == "fp32" else torch.bfloat16
    t_setup = time.perf_counter()
    # torch >= 2.0: build the parameters on the device directly (no host copy of the full model)
    with (device if hasattr(torch, "set_default_device") else _nullcontext()):
        model, Block = build_model(torch, L, H, C, V, ctx)
    model.to(device)
    with torch.no_grad():  # GPT-2 style initialisation: N(0, 0.02) matrices, zero biases, unit LayerNorms
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    torch.nn.init.zeros_(m.bias)
    nparams = sum(p.numel() for p in model.parameters())
    want = mics_param_count(L, C, V, ctx)
    if nparams != want:
        raise SystemExit(f"torch_fsdp.py: the model has {nparams} parameters, mics' GPT {want}: shapes differ")

    # Shard groups: contiguous blocks of `shard` ranks; replica groups: the same index in each block.
    if api == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model, device_ids=[local_rank] if a.device == "cuda" else None) \
            if world > 1 else model
    elif api == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype)
        if a.sharding == "hybrid":
            mesh = init_device_mesh(device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
        for blk in model.blocks:
            fully_shard(blk, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
        wrapped = model
    else:
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, MixedPrecision, ShardingStrategy
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        except Exception as e:  # e.g. torch 1.13 under Python 3.11: its _shard dataclasses do not import
            raise SystemExit(f"torch_fsdp.py: FSDP does not import in torch {torch.__version__} on Python "
                             f"{sys.version.split()[0]}: {type(e).__name__}: {e}")
        kw = {}
        if a.sharding == "hybrid":
            if not hasattr(ShardingStrategy, "HYBRID_SHARD"):
                raise SystemExit(f"torch_fsdp.py: HYBRID_SHARD needs torch >= 2.0 (this is {torch.__version__})")
            shard_pg = repl_pg = None
            for g in range(world // shard):  # every rank creates every group, in the same order
                pg = dist.new_group(list(range(g * shard, (g + 1) * shard)))
                if rank // shard == g:
                    shard_pg = pg
            for i in range(shard):
                pg = dist.new_group(list(range(i, world, shard)))
                if rank % shard == i:
                    repl_pg = pg
            kw["process_group"] = (shard_pg, repl_pg)
            strategy = ShardingStrategy.HYBRID_SHARD
        else:
            strategy = ShardingStrategy.FULL_SHARD
        if a.device == "cuda":
            kw["device_id"] = device
        wrapped = FSDP(model, sharding_strategy=strategy, auto_wrap_policy=ModuleWrapPolicy({Block}),
                       mixed_precision=MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype,
                                                      buffer_dtype=torch.bfloat16),
                       limit_all_gathers=True, **kw)

    opt_kw = dict(lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=a.weight_decay)
    if a.fused_adamw:
        opt_kw["fused"] = True
    opt = torch.optim.AdamW(wrapped.parameters(), **opt_kw)
    gen = torch.Generator(device="cpu").manual_seed(a.seed * 1000 + rank)
    data = [torch.randint(0, min(V, 50257), (a.micro_batch, T + 1), generator=gen) for _ in range(a.grad_accum)]
    data = [(d[:, :-1].contiguous().to(device), d[:, 1:].contiguous().to(device)) for d in data]

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def accum_context(last):
        """The FSDP settings of one micro-step (`last`: the accumulation boundary)."""
        if accum == "no-sync" and api in ("fsdp1", "ddp"):
            return _nullcontext() if (last or not hasattr(wrapped, "no_sync")) else wrapped.no_sync()
        if accum == "no-sync":
            wrapped.set_requires_gradient_sync(last)
        elif accum == "rs-only":
            wrapped.set_requires_all_reduce(last)
        return _nullcontext()

    def clip():
        if a.clip <= 0:
            return float("nan")
        if api == "fsdp1":
            n = wrapped.clip_grad_norm_(a.clip)
        elif api == "ddp":
            n = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        else:
            n = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), a.clip)
            n = n.full_tensor() if hasattr(n, "full_tensor") else n
        return float(n)

    sync()
    setup_s = time.perf_counter() - t_setup
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses, norms = [], [], []
    for step in range(a.steps):
        sync()
        t0 = time.perf_counter()
        total = torch.zeros((), device=device)
        for m, (x, y) in enumerate(data):
            last = m == a.grad_accum - 1
            with accum_context(last):
                # bf16 GEMMs: FSDP casts the gathered parameters (mixed precision); ddp: autocast
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=api == "ddp"):
                    loss = wrapped(x, y)
                (loss / a.grad_accum).backward()
            total += loss.detach()
        norms.append(clip())
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(total / a.grad_accum)
        if rank == 0:
            print(f"step {step + 1}/{a.steps}  step_ms {times[-1] * 1e3:.1f}  grad_norm {norms[-1]:.4f}", flush=True)
    loss_t = torch.stack(losses)
    dist.all_reduce(loss_t)
    losses = (loss_t / world).tolist()

    steady = times[a.warmup_steps:]
    med = statistics.median(steady)
    tokens_per_step = world * a.grad_accum * a.micro_batch * T
    tok_s = tokens_per_step / med
    fpt = flops_per_token(L, C, V, ctx, T)
    tflops_gpu = tok_s * fpt / world / 1e12
    if a.device == "cuda":
        mine = torch.tensor([torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()],
                            dtype=torch.float64, device=device)
    else:
        mine = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0, 0.0], dtype=torch.float64)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    alloc = [int(g[0].item()) for g in gathered]
    reserved = [int(g[1].item()) for g in gathered]
    if rank == 0:
        res = {
            "system": "torch-ddp" if api == "ddp" else "fsdp", "api": api, "sharding": a.sharding, "accum": accum,
            "torch": torch.__version__,
            "nccl": nccl_version(torch) if a.device == "cuda" else None,
            "device": torch.cuda.get_device_name(device) if a.device == "cuda" else "cpu",
            "world_size": world, "nodes": a.nodes, "shard_size": shard, "replicas": world // shard,
            "model": a.model, "layers": L, "heads": H, "channels": C, "vocab": V, "context": ctx,
            "params": nparams, "seq_len": T, "micro_batch": a.micro_batch, "grad_accum": a.grad_accum,
            "tokens_per_step": tokens_per_step, "steps": a.steps, "warmup_steps": a.warmup_steps,
            "precision": "fp32 params + AdamW, bf16 autocast, fp32 gradient all-reduce" if api == "ddp" else
                         f"bf16 params/compute, fp32 master + AdamW, {a.reduce_dtype} gradient reduction",
            "step_ms": [t * 1e3 for t in times], "step_ms_median": med * 1e3, "step_ms_mean": statistics.mean(steady) * 1e3,
            "tokens_per_s": tok_s, "flops_per_token": fpt, "tflops_per_gpu": tflops_gpu,
            "peak_flops": a.peak_flops, "mfu": tflops_gpu * 1e12 / a.peak_flops,
            "peak_mem_allocated_bytes": alloc,
            "peak_mem_reserved_bytes": reserved if a.device == "cuda" else None,
            "peak_mem_note": "torch.cuda.max_memory_allocated/reserved per rank" if a.device == "cuda"
                             else "peak RSS per rank (CPU run)",
            "losses": losses, "final_loss": losses[-1], "grad_norms": norms, "setup_s": setup_s,
        }
        print(f"{res['system']} {a.sharding} ({api}, accum {accum}) {a.model} world={world} nodes={a.nodes} shard={shard} "
              f"B={a.micro_batch} T={T} S={a.grad_accum}: step {med * 1e3:.1f} ms, {tok_s:,.0f} tok/s, "
              f"{tflops_gpu:.1f} TFLOPS/GPU, MFU {res['mfu'] * 100:.1f}% of {a.peak_flops / 1e12:.0f} TF, "
              f"peak {max(alloc) / 2**30:.2f} GiB, loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def nccl_version(torch):
    v = torch.cuda.nccl.version()
    if isinstance(v, int):  # older torch: 2.18.3 as 21803
        return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 10000 else f"{v // 1000}.{v // 100 % 10}.{v % 100}"
    return ".".join(map(str, v))


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
