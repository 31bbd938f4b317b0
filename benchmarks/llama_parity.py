"""Import and export parity of Llama, Mistral and Qwen2 checkpoints against transformers: the
largest logit differences, absolute and relative to the largest logit, per architecture and dtype.

    python benchmarks/llama_parity.py

Import: random folders written by transformers (numformer.reference.llama_folder, every weight
random, std 0.1), read by numformer in float32 and float64, against transformers' logits in the
same dtype on 2 sequences of 40 random tokens. (transformers computes RMSNorm, the attention
softmax and RoPE's cos and sin in float32 even in a float64 model, so its float64 logits agree with
anything only to float32's precision.) Export: random numformer Llamas written by
`convert --to_hf`, loaded with AutoModelForCausalLM in float32. An accuracy run: one process, no
timing (torch is imported here, unlike the speed scripts); tests/interop/test_llama.py asserts the
bounds (1e-5 relative in float32).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import REPO, machine_header, md_table, text_table, write_results   # first: it puts src/ on the path
from transformers import AutoModelForCausalLM

from numformer.interop.llama import export_hf_llama, load_hf_llama
from numformer.model import build
from numformer.model.config import LlamaConfig
from numformer.reference.llama_folder import make_llama_folder

FOLDERS = {   # name -> make_llama_folder arguments (tests/interop/test_llama.py has the same kinds)
    "Llama, GQA 4/2, f32, θ 500000": dict(arch="llama", n_head=4, n_kv_head=2, rope_theta=500_000.0),
    "Llama, MQA, tied, bf16, sharded": dict(arch="llama", n_head=4, n_kv_head=1, tie=True, dtype="bfloat16",
                                            max_shard_size="20KB", tokenizer="llama2"),
    "Llama, MHA 4/4, f32": dict(arch="llama", n_head=4, n_kv_head=4, tokenizer="tinyllama"),
    "Mistral, GQA 4/2, f16": dict(arch="mistral", n_head=4, n_kv_head=2, dtype="float16"),
    "Qwen2, GQA 4/2, tied, bf16, sharded": dict(arch="qwen2", n_head=4, n_kv_head=2, tie=True, dtype="bfloat16",
                                                max_shard_size="20KB", rope_theta=1_000_000.0),
    "Qwen2, GQA 8/2, 3 layers, f32": dict(arch="qwen2", n_head=8, n_kv_head=2, n_layer=3),
}
EXPORTS = {
    "Llama, GQA 4/2": dict(n_kv_head=2),
    "Llama, MQA, tied": dict(n_kv_head=1, tie_embeddings=True),
    "Qwen2 (q/k/v biases)": dict(n_kv_head=2, attention_bias=True, rope_theta=1_000_000.0),
}


def differences(ours, theirs) -> tuple[float, float]:
    diff = float(np.abs(ours - theirs).max())
    return diff, diff / float(np.abs(theirs).max())


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 40
    info = machine_header()
    rows, payload = [], {"info": info, "import": {}, "export": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, kw in FOLDERS.items():
            folder = make_llama_folder(tmp / str(len(rows)), text, init_std=0.1, **kw)
            for dtype, tdtype in ((np.float32, torch.float32), (np.float64, torch.float64)):
                ours = load_hf_llama(folder, dtype=dtype).eval()
                hf = AutoModelForCausalLM.from_pretrained(folder, dtype=tdtype).eval()
                idx = np.random.default_rng(0).integers(0, ours.config.vocab_size, size=(2, 40))
                with torch.no_grad():
                    theirs = hf(torch.tensor(idx)).logits.numpy()
                abs_, rel = differences(ours.forward(idx), theirs)
                rows.append(["import", name, np.dtype(dtype).name, f"{abs_:.2e}", f"{rel:.2e}"])
                payload["import"][f"{name} {np.dtype(dtype).name}"] = {"max_abs": abs_, "max_rel": rel}
        for name, kw in EXPORTS.items():
            config = LlamaConfig(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=32, n_hidden=80, **kw)
            model = build(config, seed=1)
            rng = np.random.default_rng(1)
            model.params.flat[...] = rng.normal(0, 0.1, model.params.size)
            for pname, w in model.params.items():
                if pname.endswith("norm.weight"):
                    w[...] = 1 + rng.normal(0, 0.1, w.shape)
            ckpt, out = tmp / f"ckpt{len(rows)}", tmp / f"hf{len(rows)}"
            model.save(ckpt)
            export_hf_llama(ckpt, out)                            # numformer convert --to_hf
            hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            idx = np.random.default_rng(0).integers(0, 300, size=(2, 40))
            with torch.no_grad():
                theirs = hf(torch.tensor(idx)).logits.numpy()
            abs_, rel = differences(model.eval().forward(idx), theirs)
            rows.append(["export", name, "float32", f"{abs_:.2e}", f"{rel:.2e}"])
            payload["export"][name] = {"max_abs": abs_, "max_rel": rel}
    headers = ["direction", "model", "dtype", "max |Δ logit|", "relative to max |logit|"]
    print(text_table(headers, rows))
    sys.stdout.flush()
    pj, pm = write_results("llama_parity", json.loads(json.dumps(payload, default=str)), md_table(headers, rows))
    print(f"\nwrote {pm.relative_to(REPO)} and {pj.relative_to(REPO)}")


if __name__ == "__main__":
    main()
