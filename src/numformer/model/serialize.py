"""A GPT to and from a checkpoint folder (numformer.checkpoint writes and reads the folder).

config.json holds {"format": "numformer-gpt", "model": GPTConfig, "dtype": ..., "train": ...};
model.safetensors the parameters by their Hugging Face names; tokenizer.json the tokenizer. A
model with low-rank adapters also has "lora": {"rank", "alpha", "targets"} in config.json and its
adapters' A and B in model.safetensors (`transformer.h.{i}.{layer}.lora_A`, `.lora_B`).
"""

from __future__ import annotations

import numpy as np

from pathlib import Path

from numformer.checkpoint import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE
from numformer.errors import CheckpointError
from numformer.model.config import GPTConfig, InvalidConfig
from numformer.model.gpt import GPT

FORMAT = "numformer-gpt"


def save_gpt(model: GPT, path, *, tokenizer: str | None = None, optimizer: dict | None = None,
             train_state: dict | None = None) -> None:
    """Write a checkpoint folder: weights, config, tokenizer and, when given, optimizer moments
    and training state."""
    from numformer.checkpoint import save_checkpoint

    config = {"format": FORMAT, "model": model.config.to_dict(), "dtype": model.dtype.name}
    if model.lora is not None:
        config["lora"] = model.lora.to_dict()
    if train_state is not None:
        config["train"] = train_state
    save_checkpoint(path, model=model.state_dict(), config=config,
                    tokenizer=tokenizer if tokenizer is not None else "null", optimizer=optimizer)


def load_gpt(path, *, dtype=None, ops: str = "fast") -> GPT:
    """Load a checkpoint folder written by save_gpt (or `numformer train`)."""
    from numformer.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, before_reading=lambda config, shapes, model_bytes: check_before_loading(
        path, config, shapes, model_bytes, dtype))
    return gpt_from_checkpoint(ckpt, source=str(path), dtype=dtype, ops=ops)


def check_before_loading(path, config: dict, shapes: dict | None, model_bytes: int, dtype=None) -> None:
    """Refuse, before any weight is read or allocated, a checkpoint whose config.json describes
    another model than its model.safetensors holds (`shapes`, from the file's header), or whose
    weights would not fit in the memory this machine has. Anything unreadable is left for the
    rest of the load to report. (load_checkpoint calls it with the config and header it read.)"""
    from numformer.model import memory
    from numformer.model.adapters import adapter_params

    path = Path(path)
    try:
        gpt = GPTConfig.from_dict(config["model"])
        itemsize = np.dtype(dtype or config.get("dtype", "float32")).itemsize
    except Exception:  # noqa: BLE001 - any problem here is the load's to report, in its words
        return
    if shapes is None:
        return
    memory.check_counts(memory.gpt_params(gpt) + adapter_params(gpt, config.get("lora")), memory.count(shapes),
                        path / CONFIG_FILE, path / MODEL_FILE, _described(gpt), exact=True)
    memory.refuse_if_too_big("loading this model", [("the file", model_bytes),
                                                    ("weights", memory.gpt_params(gpt) * itemsize)],
                             "free some memory or use a machine with more")


def _described(config: GPTConfig) -> str:
    return (f"n_layer {config.n_layer}, n_embd {config.n_embd}, vocab_size {config.vocab_size}, "
            f"block_size {config.block_size}")


def gpt_from_checkpoint(ckpt, source: str, dtype=None, ops: str = "fast") -> GPT:
    """The GPT of a checkpoint already read by numformer.checkpoint.load_checkpoint; its
    tokenizer, when it has one, is `model.tokenizer`."""
    cfg = ckpt.config
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{source}: config.json is not a numformer GPT checkpoint "
                              f"(expected \"format\": \"{FORMAT}\" and a \"model\" section)")
    try:
        config = GPTConfig.from_dict(cfg["model"])
    except InvalidConfig as e:
        raise CheckpointError(f"{Path(source) / CONFIG_FILE}: bad model config: {e}") from None
    dtype = dtype or cfg.get("dtype", "float32")
    if dtype not in ("float32", "float64", np.float32, np.float64):
        raise CheckpointError(f"{source}: config.json gives dtype {dtype!r}; numformer models are "
                              f"float32 or float64")
    from numformer.model import memory

    from numformer.model.adapters import adapter_params

    memory.check_counts(memory.gpt_params(config) + adapter_params(config, cfg.get("lora")),
                        sum(t.size for t in ckpt.model.values()),
                        f"{source}/config.json", f"{source}/model.safetensors", _described(config), exact=True)
    lora = None
    if cfg.get("lora") is not None:
        from numformer.errors import UsageError
        from numformer.model.adapters import LoRAConfig

        try:
            lora = LoRAConfig.from_dict(cfg["lora"])
            lora.check_fits(config)
        except UsageError as e:
            raise CheckpointError(f"{source}: bad lora section in config.json: {e}") from None
    model = GPT(config, dtype=dtype, init=False, ops=ops, lora=lora)
    model.load_state_dict(ckpt.model, source=source)
    if ckpt.tokenizer and ckpt.tokenizer.strip() != "null":
        from numformer.data.tokenizer import check_fits, from_json
        from numformer.errors import DataError

        try:
            model.tokenizer = from_json(ckpt.tokenizer)
        except DataError as e:
            raise CheckpointError(f"{Path(source) / TOKENIZER_FILE}: {e}") from None
        check_fits(model.tokenizer, config.vocab_size, source)
    return model
