#!/usr/bin/env python3
"""The loss of an exported Hugging Face GPT-2 directory, computed the way transformers does.

Usage: hf_export_check.py MODEL_DIR TOKENS_FILE [--expect LOSS] [--rtol 1e-4]

MODEL_DIR is what `mics ckpt export` writes: config.json + model.safetensors (F32 or BF16)
with GPT-2's tensor names and layouts (Conv1D weights [in, out]). TOKENS_FILE holds one
sequence of token ids per line (the format of `mics ckpt eval --tokens`).

For each line this runs GPT2LMHeadModel's forward on input_ids = the line and computes what
`labels=input_ids` gives: the cross-entropy of logits[:-1] against ids[1:], averaged over all
predicted tokens of all lines. It follows transformers' modeling_gpt2 (eager attention):
wte + wpe; per block x += c_proj(attn(ln_1(x))), x += mlp(ln_2(x)) with causal attention
scaled by 1/sqrt(head_dim), gelu_new, LayerNorm eps = layer_norm_epsilon; ln_f; lm_head tied
to wte. Python stdlib only (struct, json, math), in float64: numpy, torch and transformers are
not needed (and were not available where this was written). It checks the tensor names and
shapes as from_pretrained would (missing or unexpected keys are an error).

With --expect, exits 1 unless |loss - expect| <= rtol * |expect|.
"""
import json
import math
import struct
import sys


def fail(msg):
    print(f"hf_export_check: {msg}", file=sys.stderr)
    sys.exit(2)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = raw[base + begin: base + end]
        count = 1
        for d in info["shape"]:
            count *= d
        dtype = info["dtype"]
        if dtype == "F32":
            if len(buf) != 4 * count:
                fail(f"{name}: {len(buf)} bytes for {count} F32 values")
            values = list(struct.unpack(f"<{count}f", buf))
        elif dtype == "BF16":
            if len(buf) != 2 * count:
                fail(f"{name}: {len(buf)} bytes for {count} BF16 values")
            halves = struct.unpack(f"<{count}H", buf)
            values = list(struct.unpack(f"<{count}f", struct.pack(f"<{count}I", *[h << 16 for h in halves])))
        else:
            fail(f"{name}: dtype {dtype} (this check reads F32 and BF16)")
        tensors[name] = (info["shape"], values)
    return tensors


def matrix(shape, values):
    rows, cols = shape
    return [values[r * cols:(r + 1) * cols] for r in range(rows)]


def linear(x, w, b):
    """Conv1D: x [n, in] @ w [in, out] + b [out]."""
    out = []
    cols = len(b)
    for row in x:
        acc = list(b)
        for i, xi in enumerate(row):
            if xi == 0.0:
                continue
            wi = w[i]
            for j in range(cols):
                acc[j] += xi * wi[j]
        out.append(acc)
    return out


def layer_norm(x, w, b, eps):
    out = []
    for row in x:
        n = len(row)
        mean = sum(row) / n
        var = sum((v - mean) ** 2 for v in row) / n
        inv = 1.0 / math.sqrt(var + eps)
        out.append([(v - mean) * inv * w[i] + b[i] for i, v in enumerate(row)])
    return out


def gelu_new(v):
    return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))


def main(argv):
    args = [a for a in argv[1:]]
    expect, rtol = None, 1e-4
    if "--expect" in args:
        i = args.index("--expect")
        expect = float(args[i + 1])
        del args[i:i + 2]
    if "--rtol" in args:
        i = args.index("--rtol")
        rtol = float(args[i + 1])
        del args[i:i + 2]
    if len(args) != 2:
        fail("usage: hf_export_check.py MODEL_DIR TOKENS_FILE [--expect LOSS] [--rtol R]")
    model_dir, tokens_path = args

    with open(f"{model_dir}/config.json") as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "gpt2":
        fail(f"model_type {cfg.get('model_type')!r}, not gpt2")
    L, H, C, V, P = cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    inner = cfg.get("n_inner") or 4 * C
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if cfg.get("activation_function", "gelu_new") != "gelu_new":
        fail(f"activation_function {cfg['activation_function']!r} (this check implements gelu_new)")
    for key, default, want in (("tie_word_embeddings", True, True), ("scale_attn_weights", True, True),
                               ("scale_attn_by_inverse_layer_idx", False, False)):
        if cfg.get(key, default) != want:
            fail(f"config {key}={cfg.get(key)!r}: this check implements GPT-2's default {want}")

    tensors = read_safetensors(f"{model_dir}/model.safetensors")
    # from_pretrained accepts the names with or without the "transformer." prefix.
    tensors = {(k if k.startswith("transformer.") or k == "lm_head.weight" else "transformer." + k): v
               for k, v in tensors.items()}
    expected = {"transformer.wte.weight": [V, C], "transformer.wpe.weight": [P, C],
                "transformer.ln_f.weight": [C], "transformer.ln_f.bias": [C]}
    for l in range(L):
        h = f"transformer.h.{l}."
        expected.update({h + "ln_1.weight": [C], h + "ln_1.bias": [C],
                         h + "attn.c_attn.weight": [C, 3 * C], h + "attn.c_attn.bias": [3 * C],
                         h + "attn.c_proj.weight": [C, C], h + "attn.c_proj.bias": [C],
                         h + "ln_2.weight": [C], h + "ln_2.bias": [C],
                         h + "mlp.c_fc.weight": [C, inner], h + "mlp.c_fc.bias": [inner],
                         h + "mlp.c_proj.weight": [inner, C], h + "mlp.c_proj.bias": [C]})
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - {"lm_head.weight"})
    if missing or unexpected:
        fail(f"missing keys {missing}, unexpected keys {unexpected}")
    for name, shape in expected.items():
        if list(tensors[name][0]) != shape:
            fail(f"{name} has shape {tensors[name][0]}, GPT2LMHeadModel expects {shape}")
    if "lm_head.weight" in tensors and tensors["lm_head.weight"][1] != tensors["transformer.wte.weight"][1]:
        fail("lm_head.weight differs from transformer.wte.weight (the head is tied)")

    def vec(name):
        return tensors[name][1]

    def mat(name):
        return matrix(*tensors[name])

    wte, wpe = mat("transformer.wte.weight"), mat("transformer.wpe.weight")
    blocks = []
    for l in range(L):
        h = f"transformer.h.{l}."
        blocks.append({k: (mat(h + k) if len(tensors[h + k][0]) == 2 else vec(h + k))
                       for k in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                                 "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")})

    rows = []
    with open(tokens_path) as f:
        for line in f:
            ids = [int(w) for w in line.split()]
            if ids:
                rows.append(ids)
    if not rows:
        fail(f"{tokens_path}: no sequences")

    D = C // H
    scale = 1.0 / math.sqrt(D)
    total, count = 0.0, 0
    for ids in rows:
        n = len(ids)
        if n > P or any(t < 0 or t >= V for t in ids):
            fail(f"a sequence of {n} tokens does not fit n_positions {P} / vocab {V}")
        x = [[wte[t][c] + wpe[p][c] for c in range(C)] for p, t in enumerate(ids)]
        for b in blocks:
            a = layer_norm(x, b["ln_1.weight"], b["ln_1.bias"], eps)
            qkv = linear(a, b["attn.c_attn.weight"], b["attn.c_attn.bias"])
            merged = [[0.0] * C for _ in range(n)]
            for hd in range(H):
                q = [row[hd * D:(hd + 1) * D] for row in qkv]
                k = [row[C + hd * D:C + (hd + 1) * D] for row in qkv]
                v = [row[2 * C + hd * D:2 * C + (hd + 1) * D] for row in qkv]
                for i in range(n):
                    scores = [sum(q[i][d] * k[j][d] for d in range(D)) * scale for j in range(i + 1)]  # causal
                    m = max(scores)
                    e = [math.exp(s - m) for s in scores]
                    z = sum(e)
                    for d in range(D):
                        merged[i][hd * D + d] = sum(e[j] * v[j][d] for j in range(i + 1)) / z
            proj = linear(merged, b["attn.c_proj.weight"], b["attn.c_proj.bias"])
            x = [[xv + pv for xv, pv in zip(xr, pr)] for xr, pr in zip(x, proj)]
            m2 = layer_norm(x, b["ln_2.weight"], b["ln_2.bias"], eps)
            fc = [[gelu_new(v) for v in row] for row in linear(m2, b["mlp.c_fc.weight"], b["mlp.c_fc.bias"])]
            out = linear(fc, b["mlp.c_proj.weight"], b["mlp.c_proj.bias"])
            x = [[xv + ov for xv, ov in zip(xr, orow)] for xr, orow in zip(x, out)]
        x = layer_norm(x, vec("transformer.ln_f.weight"), vec("transformer.ln_f.bias"), eps)
        for p in range(n - 1):  # labels=input_ids: logits[p] predicts ids[p + 1]
            logits = [sum(x[p][c] * wte[t][c] for c in range(C)) for t in range(V)]
            m = max(logits)
            lse = m + math.log(sum(math.exp(z - m) for z in logits))
            total += lse - logits[ids[p + 1]]
            count += 1
    loss = total / count
    print(f"hf gpt2 forward: {len(rows)} sequences, {count} predicted tokens: mean cross-entropy {loss:.9g}")
    if expect is not None:
        rel = abs(loss - expect) / max(abs(expect), 1e-30)
        print(f"mics: {expect:.9g}; relative difference {rel:.3g} (tolerance {rtol:g})")
        if rel > rtol:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
