"""Write a small Hugging Face GPT-2 folder with random weights, laid out as GPT-2's own folders are:
config.json, model.safetensors, and the tokenizer as vocab.json + merges.txt (no tokenizer.json).

    python -m numformer.reference.gpt2_folder tiny-gpt2 --text input.txt

The tokenizer is a byte-level BPE (GPT-2's scheme) trained on --text with the `tokenizers`
package, with <|endoftext|> as its last token; the model is transformers' GPT2LMHeadModel,
randomly initialised. It stands in for a real GPT-2 (which needs the Hugging Face hub) in the
README's fine-tuning walk-through, in the tests (tests/helpers.py) and in the benchmarks. Needs
torch and transformers (numformer's test extra: pip install -e '.[test]').
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from numformer.checkpoint import replace_file


def make_gpt2_folder(out, text: str, *, vocab_size: int = 512, n_layer: int = 2, n_head: int = 2,
                     n_embd: int = 64, n_positions: int = 128, seed: int = 0, bfloat16: bool = False) -> Path:
    """Write the folder at `out` and return its path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator([text], vocab_size=vocab_size - 1, min_frequency=1, show_progress=False)
    tok.save_model(str(out))                           # vocab.json, merges.txt
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    eos = vocab["<|endoftext|>"] = len(vocab)          # GPT-2's one special token, the last id
    replace_file(out / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    V = len(vocab)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=V, n_positions=n_positions, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                        bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(config).eval()
    if bfloat16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write")
    p.add_argument("--text", required=True, help="UTF-8 text file to train the tokenizer on")
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--n_positions", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bfloat16", action="store_true", help="store the weights in bfloat16")
    a = p.parse_args()
    text = Path(a.text).read_text(encoding="utf-8")
    folder = make_gpt2_folder(a.out, text, vocab_size=a.vocab_size, n_layer=a.n_layer, n_head=a.n_head,
                              n_embd=a.n_embd, n_positions=a.n_positions, seed=a.seed, bfloat16=a.bfloat16)
    print(f"wrote {folder}: " + ", ".join(sorted(f.name for f in folder.iterdir())))


if __name__ == "__main__":
    main()
