"""Write a small Hugging Face Llama, Mistral or Qwen2 folder with random weights, laid out as those
models' own folders are: config.json, model.safetensors (or shards and model.safetensors.index.json),
generation_config.json, tokenizer.json and tokenizer_config.json.

    python -m numformer.reference.llama_folder tiny-llama --text input.txt
    python -m numformer.reference.llama_folder tiny-qwen2 --text input.txt --arch qwen2 --bfloat16

The model is transformers' LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM, randomly
initialised (every weight, the RMSNorm gains and Qwen2's biases included, so that none is a
trivial 0 or 1); the tokenizer is trained on --text with the `tokenizers` package
(numformer.reference.llama_tokenizers): Llama 3's byte-level BPE for a Llama, Qwen2's for a Qwen2,
Llama 2's "▁" BPE with byte fallback for a Mistral (`--tokenizer` picks another). It stands in for
a real checkpoint (which needs the Hugging Face hub) in the README's walk-through and in the
tests. Needs torch and transformers (numformer's test extra: pip install -e '.[test]').
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from numformer.checkpoint import replace_file
from numformer.reference.llama_tokenizers import byte_level_bpe, metaspace_bpe, tokenizer_config

MODELS = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
          "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
TOKENIZERS = ("llama3", "qwen2", "llama2", "tinyllama")
DEFAULT_TOKENIZER = {"llama": "llama3", "mistral": "llama2", "qwen2": "qwen2"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_tokenizer(kind: str, text: str, vocab_size: int):
    """(tokenizers.Tokenizer, tokenizer_config.json dict) of `kind` (TOKENIZERS), trained on `text`."""
    if kind in ("llama3", "qwen2"):
        tok = byte_level_bpe(text, vocab_size, kind)
        return tok, tokenizer_config(tok, kind)
    if kind in ("llama2", "tinyllama"):
        tok = metaspace_bpe(text, vocab_size, "metaspace" if kind == "llama2" else "normalizer")
        return tok, tokenizer_config(tok, "llama2")
    raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {kind!r}")


def make_llama_folder(out, text: str, *, arch: str = "llama", tokenizer: str | None = None, vocab_size: int = 512,
                      vocab_multiple: int = 1, n_layer: int = 2, n_head: int = 4, n_kv_head: int = 2,
                      n_embd: int = 64, n_hidden: int = 176, block_size: int = 128, rope_theta: float = 10_000.0,
                      rms_norm_eps: float = 1e-5, tie: bool = False, dtype: str = "float32", init_std: float = 0.02,
                      max_shard_size: str | None = None, seed: int = 0, **config) -> Path:
    """Write the folder at `out` and return its path.

    vocab_size: the tokenizer's size asked for (BPE may stop short of it); the model's vocabulary
    is the tokenizer's size rounded up to a multiple of `vocab_multiple` (real models pad theirs).
    dtype: the weights' dtype in the files. max_shard_size ("20KB"): shard the weights as
    save_pretrained does. `config`: further keys of the transformers config (sliding_window, ...)."""
    if arch not in MODELS:
        raise ValueError(f"arch must be one of {', '.join(MODELS)}, got {arch!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok, tok_config = make_tokenizer(tokenizer or DEFAULT_TOKENIZER[arch], text, vocab_size)
    V = -(-tok.get_vocab_size() // vocab_multiple) * vocab_multiple
    specials = {role: tok.token_to_id(tok_config[role]) for role in ("bos_token", "eos_token")
                if tok_config.get(role)}
    config_class, model_class = MODELS[arch]
    extra = {"sliding_window": None} if arch == "mistral" else {"use_sliding_window": False} if arch == "qwen2" else {}
    hf_config = config_class(vocab_size=V, hidden_size=n_embd, intermediate_size=n_hidden, num_hidden_layers=n_layer,
                             num_attention_heads=n_head, num_key_value_heads=n_kv_head,
                             max_position_embeddings=block_size, rope_theta=rope_theta, rms_norm_eps=rms_norm_eps,
                             tie_word_embeddings=tie, bos_token_id=specials.get("bos_token"),
                             eos_token_id=specials.get("eos_token"), **{**extra, **config})
    torch.manual_seed(seed)
    model = model_class(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))     # RMSNorm gains near 1, not all 1
            else:
                p.normal_(0.0, init_std)                   # weights and Qwen2's biases (0 at transformers' init)
    model = model.to(DTYPES[dtype])
    save = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, safe_serialization=True, **save)
    tok.save(str(out / "tokenizer.json"))
    replace_file(out / "tokenizer_config.json", (json.dumps(tok_config, ensure_ascii=False, indent=2) + "\n").encode())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write")
    p.add_argument("--text", required=True, help="UTF-8 text file to train the tokenizer on")
    p.add_argument("--arch", choices=tuple(MODELS), default="llama")
    p.add_argument("--tokenizer", choices=TOKENIZERS, default=None,
                   help="the tokenizer's kind (default: llama3 for a Llama, qwen2 for a Qwen2, llama2 for a Mistral)")
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_kv_head", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--n_hidden", type=int, default=176)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--rope_theta", type=float, default=10_000.0)
    p.add_argument("--tie", action="store_true", help="tie the LM head to the token embedding")
    p.add_argument("--bfloat16", action="store_true", help="store the weights in bfloat16")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    text = Path(a.text).read_text(encoding="utf-8")
    folder = make_llama_folder(a.out, text, arch=a.arch, tokenizer=a.tokenizer, vocab_size=a.vocab_size,
                               n_layer=a.n_layer, n_head=a.n_head, n_kv_head=a.n_kv_head, n_embd=a.n_embd,
                               n_hidden=a.n_hidden, block_size=a.block_size, rope_theta=a.rope_theta, tie=a.tie,
                               dtype="bfloat16" if a.bfloat16 else "float32", seed=a.seed)
    print(f"wrote {folder}: " + ", ".join(sorted(f.name for f in folder.iterdir())))


if __name__ == "__main__":
    main()
