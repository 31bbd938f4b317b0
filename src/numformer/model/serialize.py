"""A GPT to and from a checkpoint folder (numformer.checkpoint writes and reads the folder).

config.json holds {"format": "numformer-gpt", "model": GPTConfig, "dtype": ..., "train": ...};
model.safetensors the parameters by their Hugging Face names; tokenizer.json the tokenizer.
"""

from __future__ import annotations

import numpy as np

from numformer.errors import CheckpointError
from numformer.model.config import GPTConfig
from numformer.model.gpt import GPT

FORMAT = "numformer-gpt"


def save_gpt(model: GPT, path, *, tokenizer: str | None = None, optimizer: dict | None = None,
             train_state: dict | None = None) -> None:
    """Write a checkpoint folder: weights, config, tokenizer and, when given, optimizer moments
    and training state."""
    from numformer.checkpoint import save_checkpoint

    config = {"format": FORMAT, "model": model.config.to_dict(), "dtype": model.dtype.name}
    if train_state is not None:
        config["train"] = train_state
    save_checkpoint(path, model=model.state_dict(), config=config,
                    tokenizer=tokenizer if tokenizer is not None else "null", optimizer=optimizer)


def load_gpt(path, *, dtype=None, ops: str = "fast") -> GPT:
    """Load a checkpoint folder written by save_gpt (or `numformer train`)."""
    from numformer.checkpoint import load_checkpoint

    return gpt_from_checkpoint(load_checkpoint(path), source=str(path), dtype=dtype, ops=ops)


def gpt_from_checkpoint(ckpt, source: str, dtype=None, ops: str = "fast") -> GPT:
    """The GPT of a checkpoint already read by numformer.checkpoint.load_checkpoint; its
    tokenizer, when it has one, is `model.tokenizer`."""
    cfg = ckpt.config
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{source}: config.json is not a numformer GPT checkpoint "
                              f"(expected \"format\": \"{FORMAT}\" and a \"model\" section)")
    try:
        config = GPTConfig.from_dict(cfg["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: bad model config in config.json: {e}") from None
    dtype = dtype or cfg.get("dtype", "float32")
    if dtype not in ("float32", "float64", np.float32, np.float64):
        raise CheckpointError(f"{source}: config.json gives dtype {dtype!r}; numformer models are "
                              f"float32 or float64")
    model = GPT(config, dtype=dtype, init=False, ops=ops)
    model.load_state_dict(ckpt.model, source=source)
    if ckpt.tokenizer and ckpt.tokenizer.strip() != "null":
        from numformer.data.tokenizer import from_json

        model.tokenizer = from_json(ckpt.tokenizer)
    return model
