#!/usr/bin/env python3
"""Loads a `mics ckpt export` directory with Hugging Face transformers' GPT2LMHeadModel and
prints the loss it computes on token rows (one row of ids per line), with labels=input_ids
(the mean cross-entropy of logits[:-1] against ids[1:] over all rows), beside the loss mics
computed (`mics ckpt eval`). Exit status 1 if they differ by more than --rtol.

Needs torch and transformers (not Debian packages: the GPU machines have them); the stdlib-only
twin, tests/hf_export_check.py, runs in CI.
usage: hf_transformers_check.py HF_DIR TOKENS.txt --expect LOSS [--rtol 1e-4]
"""
import argparse
import sys

import torch
from transformers import GPT2LMHeadModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("tokens")
    ap.add_argument("--expect", type=float, required=True)
    ap.add_argument("--rtol", type=float, default=1e-4)
    a = ap.parse_args()
    rows = [[int(t) for t in line.split()] for line in open(a.tokens) if line.strip()]
    model = GPT2LMHeadModel.from_pretrained(a.hf_dir, torch_dtype=torch.float32)
    model.eval()
    ids = torch.tensor(rows, dtype=torch.long)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    rel = abs(loss - a.expect) / abs(a.expect)
    print(f"transformers {__import__('transformers').__version__} GPT2LMHeadModel loss {loss:.8f}, "
          f"mics {a.expect:.8f}, relative difference {rel:.2e}")
    return 0 if rel <= a.rtol else 1


if __name__ == "__main__":
    sys.exit(main())
