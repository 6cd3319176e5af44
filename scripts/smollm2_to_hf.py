"""Write SmolLM2 in Hugging Face format (safetensors, config, tokenizer, chat template) from the F16
GGUF that scripts/setup makes, for vLLM. The tokenizer comes from the same GGUF, so the vLLM server
and the llama.cpp servers share one vocabulary.

Usage: smollm2_to_hf.py SRC.gguf OUT_DIR
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    folder, name = os.path.dirname(os.path.abspath(src)), os.path.basename(src)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    os.makedirs(out, exist_ok=True)
    # transformers marks GGUF-loaded models as quantized and refuses save_pretrained: the weights
    # are plain tensors by now, so write them and a config without the quantization entry.
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tok.save_pretrained(out)
    print(f"wrote {out}: {len(state)} tensors, vocab {len(tok)}, eos {tok.eos_token!r}, "
          f"chat template: {bool(tok.chat_template)}")


if __name__ == "__main__":
    main()
