#!/usr/bin/env python3
"""Generate a small Mixture-of-Experts GGUF model (qwen2moe architecture) for the placement tests.

4 blocks of width 256 with 8 routed experts (2 used per token, width 128) and one shared expert
(width 256), random weights, the llama SPM tokenizer from llama.cpp's tree. Routed experts are
most of the block weights, as in real MoE models, so the planner has something to place: the
test starts llama-server with the planner's flags (`--tensor-split`, `--n-cpu-moe`/`-ot`) over
local rpc-servers and compares the buffers llama-server logs with the prediction.

Kept apart from gen_models.py (its own cache key in scripts/setup), so adding it did not
regenerate the other models.

Usage (scripts/setup runs this):
  gen_moe_model.py --vocab-dir VENDOR/models --out DIR
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGUFReader, GGUFWriter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_models import CHATML_TEMPLATE, OUTPUT_SHARPEN, TOKENIZER_KEYS, copy_field, silence_non_text_tokens  # noqa: E402

LAYERS, EMBD, HEADS, KV_HEADS, CTX = 4, 256, 4, 4, 4096
EXPERTS, EXPERTS_USED, FF_EXP, FF_SHEXP = 8, 2, 128, 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-dir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    vocab = GGUFReader(os.path.join(args.vocab_dir, "ggml-vocab-llama-spm.gguf"))
    n_vocab = len(vocab.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(11)

    def mat(*shape: int) -> np.ndarray:
        # numpy order is reversed ggml order: the last axis is the row (fan-in).
        return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1])).astype(np.float32)

    w: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((n_vocab, EMBD), dtype=np.float32).astype(np.float16),
        "output_norm.weight": np.ones(EMBD, dtype=np.float32),
        "output.weight": mat(n_vocab, EMBD) * OUTPUT_SHARPEN,
    }
    silence_non_text_tokens(w, vocab)
    w["output.weight"] = w["output.weight"].astype(np.float16)
    kv = KV_HEADS * (EMBD // HEADS)
    for i in range(LAYERS):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = np.ones(EMBD, dtype=np.float32)
        w[p + "attn_q.weight"] = mat(EMBD, EMBD)
        w[p + "attn_k.weight"] = mat(kv, EMBD)
        w[p + "attn_v.weight"] = mat(kv, EMBD)
        w[p + "attn_output.weight"] = mat(EMBD, EMBD)
        w[p + "ffn_norm.weight"] = np.ones(EMBD, dtype=np.float32)
        w[p + "ffn_gate_inp.weight"] = mat(EXPERTS, EMBD)
        w[p + "ffn_gate_exps.weight"] = mat(EXPERTS, FF_EXP, EMBD)
        w[p + "ffn_up_exps.weight"] = mat(EXPERTS, FF_EXP, EMBD)
        w[p + "ffn_down_exps.weight"] = mat(EXPERTS, EMBD, FF_EXP)
        w[p + "ffn_gate_inp_shexp.weight"] = mat(EMBD)
        w[p + "ffn_gate_shexp.weight"] = mat(FF_SHEXP, EMBD)
        w[p + "ffn_up_shexp.weight"] = mat(FF_SHEXP, EMBD)
        w[p + "ffn_down_shexp.weight"] = mat(EMBD, FF_SHEXP)

    path = os.path.join(args.out, "moe.gguf")
    tmp = path + ".part"
    writer = GGUFWriter(tmp, "qwen2moe")
    writer.add_name("tightwad-test-moe")
    writer.add_context_length(CTX)
    writer.add_embedding_length(EMBD)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FF_SHEXP)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_expert_count(EXPERTS)
    writer.add_expert_used_count(EXPERTS_USED)
    writer.add_expert_feed_forward_length(FF_EXP)
    writer.add_expert_shared_feed_forward_length(FF_SHEXP)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    for key in TOKENIZER_KEYS:
        field = vocab.fields.get(key)
        if field is not None:
            copy_field(writer, field)
    writer.add_chat_template(CHATML_TEMPLATE)
    for name, t in w.items():
        writer.add_tensor(name, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    print(f"moe model: {LAYERS} blocks, {EXPERTS} experts ({EXPERTS_USED} used) + shared, {n_vocab} tokens")


if __name__ == "__main__":
    main()
