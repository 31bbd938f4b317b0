"""Fine-tuning: `numformer train --init_from DIR` and low-rank adapters.

--init_from DIR starts training from the weights in DIR (a numformer checkpoint folder of either
family, a training run's out_dir, whose best/ or latest/ is used, a Hugging Face GPT-2, Llama,
Mistral or Qwen2 folder: numformer.interop.hf, or a GGUF file: numformer.interop.gguf, its
weights dequantized and its chat template carried into the checkpoints) at step 0 with fresh
optimizer state. The model's family (--arch), shape and tokenizer come from
DIR: a model flag that contradicts DIR is refused in one line (only --dropout may be set, and for
a Llama a --block_size up to DIR's: its positions are rotations, with no table to cut, and a real
Llama's context of thousands of tokens is more than a CPU fine-tuning run wants; the fine-tuned
model's context is then that block_size), and --data is encoded with DIR's tokenizer.
A numformer checkpoint with adapters is merged first (W + (α/r)·B A), so fine-tuning continues
from the function it computes.

--lora_rank R trains low-rank adapters (numformer.model.adapters) on the layers --lora_targets
names, scaled by --lora_alpha / R, and freezes every other weight: the gradient buffer and Adam's
moments then hold the adapters alone.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from numformer.checkpoint import PICKLE_SUFFIXES, pickle_refusal, read_json
from numformer.errors import CheckpointError, UsageError, hub_hint, looks_like_hub_name
from numformer.interop.gguf import is_gguf
from numformer.interop.hf import load_hf
from numformer.model.adapters import LoRAConfig, merged_state_dict, parse_targets
from numformer.model.decoders import build, load
from numformer.model.llama import Llama
from numformer.model.serialize import checkpoint_family, model_config

# The flat keys a fine-tuning run takes from DIR, not from its flags (dropout excepted), per family.
SHAPE_KEYS = {"gpt2": ("n_layer", "n_head", "n_embd", "block_size", "bias", "pos_encoding", "sinusoidal_form", "gelu"),
              "llama": ("n_layer", "n_head", "n_kv_head", "n_embd", "n_hidden", "block_size", "rope_theta",
                        "tie_embeddings", "attention_bias")}
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_targets")


def init_folder(path) -> tuple[Path, str]:
    """(folder or file, kind) of --init_from: kind "numformer", "hf" or "gguf". CheckpointError (one
    line) for a path that is not such a folder or a GGUF file; a pickle is refused without being
    opened."""
    root = Path(path)
    if not str(path).strip():
        raise UsageError("--init_from is empty; give a checkpoint folder or a Hugging Face model folder")
    if root.suffix.lower() == ".gguf" or is_gguf(root):
        return root, "gguf"                     # Llama.from_gguf says what is wrong with the file
    if not root.exists():
        if str(path) == "resume":        # nanoGPT's words for "continue this run"
            raise UsageError("--init_from resume is nanoGPT's way to continue a run; numformer's is --resume "
                             "(numformer train --out_dir DIR --resume)")
        if str(path) == "scratch":
            raise UsageError("--init_from scratch is nanoGPT's default; numformer starts from scratch when "
                             "--init_from is left out")
        if looks_like_hub_name(str(path)):
            raise CheckpointError(hub_hint("--init_from", str(path), "causal"))
        raise CheckpointError(f"--init_from {root}: no such folder")
    if not root.is_dir():
        if root.suffix.lower() in PICKLE_SUFFIXES:
            raise pickle_refusal(root)
        raise CheckpointError(f"--init_from {root} is a file; give a numformer checkpoint folder or a Hugging Face "
                              f"model folder")
    if not (root / "config.json").is_file():
        for sub in ("best", "latest"):            # a training run's out_dir, as `numformer sample` takes it
            if (root / sub / "config.json").is_file():
                return init_folder(root / sub)
        pickles = sorted(p for p in root.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise pickle_refusal(pickles[0], context=f"{root} has no config.json")
        raise CheckpointError(f"--init_from {root}: no config.json; give a numformer checkpoint folder or a Hugging "
                              f"Face model folder")
    doc = read_json(root / "config.json", "--init_from needs it")
    return root, ("numformer" if checkpoint_family(doc) is not None else "hf")


def load_init_model(path, dtype="float32"):
    """The model in --init_from's folder (a GPT or a Llama), adapters merged, with its tokenizer
    (model.tokenizer)."""
    root, kind = init_folder(path)
    if kind == "gguf":
        return Llama.from_gguf(root, dtype=np.dtype(dtype))
    model = load(root, dtype=dtype) if kind == "numformer" else load_hf(root, dtype=np.dtype(dtype))
    if model.lora is not None:
        plain = build(model.config, dtype=model.dtype, init=False)
        plain.load_state_dict(merged_state_dict(model), source=str(root))
        plain.tokenizer = model.tokenizer
        model = plain
    problem = getattr(model, "hf_tokenizer_problem", None)
    if model.tokenizer is None and problem:       # the files are there: say what is wrong with them
        raise CheckpointError(f"--init_from {root}: its tokenizer cannot be used: {problem}; so --data cannot be "
                              f"encoded for it")
    if model.tokenizer is None:
        raise CheckpointError(f"--init_from {root} has no tokenizer (numformer's tokenizer.json, or Hugging Face's "
                              f"tokenizer.json, or GPT-2's vocab.json + merges.txt), so --data cannot be encoded for it")
    if model.tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"--init_from {root}: its tokenizer has {model.tokenizer.vocab_size} tokens but the "
                              f"model only {model.config.vocab_size}")
    return model


def init_settings(path, given: dict) -> dict:
    """The flat settings that --init_from fixes (the model's family and shape and the tokenizer's
    kind), after refusing any given flag that contradicts them."""
    model = load_init_model(path)
    cfg = model.config
    fixed = {"arch": cfg.family, **{key: getattr(cfg, key) for key in SHAPE_KEYS[cfg.family]}}
    fixed["tokenizer"] = model.tokenizer.kind
    if cfg.family == "llama" and isinstance(given.get("block_size"), int) and 0 < given["block_size"] <= cfg.block_size:
        fixed["block_size"] = given["block_size"]      # a shorter context: RoPE has no table to cut
    for key, value in fixed.items():
        if key in given and given[key] != value:
            lower = ", and for a Llama --block_size lowered" if cfg.family == "llama" else ""
            raise UsageError(f"--{key} {given[key]!r} contradicts --init_from {path}, whose model has {key} {value!r}; "
                             f"the model comes from the folder (of its settings only --dropout may be changed{lower})")
    if given.get("vocab_size"):
        raise UsageError(f"--vocab_size contradicts --init_from {path}: the tokenizer and its vocabulary come from "
                         f"the folder")
    if "dropout" not in given:
        fixed["dropout"] = cfg.dropout
    return fixed


def read_init(cfg) -> dict:
    """What a fine-tuning run starts from: the model's full config (GPTConfig or LlamaConfig, with
    the run's dropout and block_size), its flat parameters and its tokenizer's JSON."""
    model = load_init_model(cfg.init_from, dtype=cfg.dtype)
    config = dataclasses.replace(model.config, dropout=cfg.model.dropout, block_size=cfg.model.block_size)
    return {"config": config, "params": model.params.flat, "tokenizer": model.tokenizer.to_json()}


def checkpoint_model_config(ckpt, dropout):
    """The full model config a resumed fine-tuning run's checkpoint records (vocab_size and the
    norms' eps included, which the flat settings do not carry)."""
    family = checkpoint_family(ckpt.config) or "gpt2"        # a config.json that names no family: a GPT's
    return dataclasses.replace(model_config(family, ckpt.config["model"]), dropout=dropout)


def lora_config(cfg):
    """The run's LoRAConfig, or None without --lora_rank."""
    if not cfg.lora_rank:
        return None
    return LoRAConfig(cfg.lora_rank, float(cfg.lora_alpha or cfg.lora_rank), parse_targets(cfg.lora_targets))


def validate_finetuning(cfg) -> None:
    """One-line UsageErrors for the fine-tuning settings."""
    if cfg.lora_rank < 0:
        raise UsageError(f"lora_rank must be >= 0 (0: no adapters), got {cfg.lora_rank}")
    if not (math.isfinite(cfg.lora_alpha) and cfg.lora_alpha >= 0):
        raise UsageError(f"lora_alpha must be a finite number >= 0 (0: equal to lora_rank), got {cfg.lora_alpha}")
    if not cfg.lora_rank:
        return
    if not cfg.init_from:
        raise UsageError("--lora_rank trains adapters on frozen pretrained weights: give them with --init_from")
    lora_config(cfg).check_fits(cfg.model)


__all__ = ["init_folder", "load_init_model", "init_settings", "read_init", "lora_config", "validate_finetuning"]
