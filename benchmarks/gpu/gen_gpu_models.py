#!/usr/bin/env python3
"""Models of realistic size for the GPU benchmark (run on the GPU machine; random weights).

Target: 28 layers x 3072 wide (a 3B-class shape, ~5.6 GB in F16) whose first 4 layers are "real"
and the other 24 near-identity (their output projections scaled by DELTA): it costs a 28-layer
forward pass per token but predicts nearly what its first 4 layers predict.
Draft: those 4 layers alone, F16 (~7x cheaper per token). Greedy acceptance is realistic (~0.5-0.8)
rather than 100%, because the 24 extra layers still nudge the target's choices.
The output layer is sharpened and non-text tokens silenced, as in scripts/gen_models.py.

Usage: PYTHONPATH=<llama.cpp>/gguf-py gen_gpu_models.py --vocab VOCAB.gguf --out DIR
"""
import argparse
import os
import sys

import numpy as np

# gen_models.py: in the repository's scripts/, or beside this file in the .gpu/ bundle.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_models as g  # noqa: E402

DELTA = 0.03
REAL_LAYERS = 4
EXTRA_LAYERS = 24


def f16(weights):
    return {k: (v.astype(np.float16) if v.ndim >= 2 else v) for k, v in weights.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    vocab = g.GGUFReader(args.vocab)
    n_vocab = len(vocab.fields["tokenizer.ggml.tokens"].data)
    if os.environ.get("GPU_MODELS_SMOKE"):  # a tiny run of the same code, to check it here
        wide = g.Shape(layers=REAL_LAYERS, embd=256, ff=512, heads=4, kv_heads=2, ctx=2048)
    else:
        wide = g.Shape(layers=REAL_LAYERS, embd=3072, ff=8192, heads=24, kv_heads=8, ctx=8192)
    base = g.random_weights(wide, n_vocab, np.random.default_rng(11))
    g.silence_non_text_tokens(base, vocab)
    g.write_llama(os.path.join(args.out, "gpu-draft.gguf"), "tightwad-gpu-draft", wide, f16(base), vocab)
    print("draft written", flush=True)
    target = dict(base)
    rng = np.random.default_rng(12)
    for i in range(EXTRA_LAYERS):
        layer = g.random_weights(g.Shape(1, wide.embd, wide.ff, wide.heads, wide.kv_heads, wide.ctx), 8, rng)
        for name, t in layer.items():
            if not name.startswith("blk.0."):
                continue
            suffix = name[len("blk.0."):]
            if suffix.startswith(("attn_output", "ffn_down")):
                t = (t * DELTA).astype(np.float32)
            target[f"blk.{REAL_LAYERS + i}.{suffix}"] = t
    shape = g.Shape(REAL_LAYERS + EXTRA_LAYERS, wide.embd, wide.ff, wide.heads, wide.kv_heads, wide.ctx)
    g.write_llama(os.path.join(args.out, "gpu-target.gguf"), "tightwad-gpu-target", shape, f16(target), vocab)
    print("target written", flush=True)


if __name__ == "__main__":
    main()
