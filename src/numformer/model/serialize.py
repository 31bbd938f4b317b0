"""A GPT's checkpoint folder: what is in it, written and read as plain data (numformer.checkpoint
writes and reads the folder).

config.json holds {"format": "numformer-gpt", "model": GPTConfig, "dtype": ..., "train": ...};
model.safetensors the parameters by their Hugging Face names; tokenizer.json the tokenizer. A
model with low-rank adapters also has "lora": {"rank", "alpha", "targets"} in config.json and its
adapters' A and B in model.safetensors (`transformer.h.{i}.{layer}.lora_A`, `.lora_B`).

This module knows the files, not the model: `write_gpt` takes a config and named tensors,
`read_gpt` gives them back checked (`SavedGPT`), and `GPT.save` / `GPT.load` (numformer.model.gpt)
are built on the two. So the model imports this module and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numformer.checkpoint import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, load_checkpoint, save_checkpoint
from numformer.data.tokenizer import check_fits, from_json
from numformer.errors import CheckpointError, DataError, UsageError
from numformer.model import memory
from numformer.model.adapters import LoRAConfig, adapter_params
from numformer.model.config import GPTConfig, InvalidConfig
from numformer.model.params import check_tensors, gpt_param_shapes, lora_param_shapes

FORMAT = "numformer-gpt"
DTYPES = ("float32", "float64")


@dataclass
class SavedGPT:
    """A GPT checkpoint, read and checked: its config, dtype and adapters (LoRAConfig or None),
    its tensors by name (every parameter and adapter the config describes, each of its shape, in
    that dtype),
    its tokenizer (None if it has none) and that tokenizer's JSON text as the file holds it."""

    config: GPTConfig
    dtype: np.dtype
    lora: LoRAConfig | None
    tensors: dict[str, np.ndarray]
    tokenizer: object | None
    tokenizer_json: str


def save_gpt(model, path, *, tokenizer: str | None = None, optimizer: dict | None = None,
             train_state: dict | None = None) -> None:
    """Write `model`'s checkpoint folder (GPT.save): weights, config, tokenizer and, when given,
    optimizer moments and training state."""
    write_gpt(path, model.config, model.state_dict(), dtype=model.dtype, lora=model.lora, tokenizer=tokenizer,
              optimizer=optimizer, train_state=train_state)


def write_gpt(path, config: GPTConfig, tensors: dict[str, np.ndarray], *, dtype, lora: LoRAConfig | None = None,
              tokenizer: str | None = None, optimizer: dict | None = None, train_state: dict | None = None) -> None:
    """Write a checkpoint folder of a GPT with `config` whose parameters (and adapters) are `tensors`."""
    doc = {"format": FORMAT, "model": config.to_dict(), "dtype": np.dtype(dtype).name}
    if lora is not None:
        doc["lora"] = lora.to_dict()
    if train_state is not None:
        doc["train"] = train_state
    save_checkpoint(path, model=tensors, config=doc, tokenizer=tokenizer if tokenizer is not None else "null",
                    optimizer=optimizer)


def read_gpt(path, *, dtype=None) -> SavedGPT:
    """Read and check a checkpoint folder written by write_gpt (or `numformer train`)."""
    ckpt = load_checkpoint(path, before_reading=lambda config, shapes, model_bytes: check_before_loading(
        path, config, shapes, model_bytes, dtype))
    return saved_gpt(ckpt, source=str(path), dtype=dtype)


def check_before_loading(path, config: dict, shapes: dict | None, model_bytes: int, dtype=None) -> None:
    """Refuse, before any weight is read or allocated, a checkpoint whose config.json describes
    another model than its model.safetensors holds (`shapes`, from the file's header), or whose
    weights would not fit in the memory this machine has. Anything unreadable is left for the
    rest of the load to report. (load_checkpoint calls it with the config and header it read.)"""
    path = Path(path)
    if shapes is None or not isinstance(config.get("model"), dict):
        return
    try:
        gpt = GPTConfig.from_dict(config["model"])
        itemsize = np.dtype(dtype or config.get("dtype", "float32")).itemsize
    except (InvalidConfig, TypeError):     # the config's values, or a dtype NumPy does not know
        return
    memory.check_counts(memory.gpt_params(gpt) + adapter_params(gpt, config.get("lora")), memory.count(shapes),
                        path / CONFIG_FILE, path / MODEL_FILE, _described(gpt), exact=True)
    memory.refuse_if_too_big("loading this model", [("the file", model_bytes),
                                                    ("weights", memory.gpt_params(gpt) * itemsize)],
                             "free some memory or use a machine with more")


def _described(config: GPTConfig) -> str:
    return (f"n_layer {config.n_layer}, n_embd {config.n_embd}, vocab_size {config.vocab_size}, "
            f"block_size {config.block_size}")


def saved_gpt(ckpt, source: str, dtype=None) -> SavedGPT:
    """The GPT checkpoint that numformer.checkpoint.load_checkpoint read from `source`, checked:
    CheckpointError (one line naming the file) for anything a GPT cannot be built from."""
    cfg = ckpt.config
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{source}: config.json is not a numformer GPT checkpoint "
                              f"(expected \"format\": \"{FORMAT}\" and a \"model\" section)")
    try:
        config = GPTConfig.from_dict(cfg["model"])
    except InvalidConfig as e:
        raise CheckpointError(f"{Path(source) / CONFIG_FILE}: bad model config: {e}") from None
    dtype = dtype or cfg.get("dtype", "float32")
    if dtype not in DTYPES + (np.float32, np.float64):
        raise CheckpointError(f"{source}: config.json gives dtype {dtype!r}; numformer models are "
                              f"float32 or float64")
    memory.check_counts(memory.gpt_params(config) + adapter_params(config, cfg.get("lora")),
                        sum(t.size for t in ckpt.model.values()),
                        f"{source}/config.json", f"{source}/model.safetensors", _described(config), exact=True)
    lora = None
    if cfg.get("lora") is not None:
        try:
            lora = LoRAConfig.from_dict(cfg["lora"])
            lora.check_fits(config)
        except UsageError as e:
            raise CheckpointError(f"{source}: bad lora section in config.json: {e}") from None
    expected = gpt_param_shapes(config)
    if lora is not None:
        expected.update(lora_param_shapes(config, lora.rank, lora.targets))
    check_tensors(ckpt.model, expected, source)
    tokenizer = None
    if ckpt.tokenizer and ckpt.tokenizer.strip() != "null":
        try:
            tokenizer = from_json(ckpt.tokenizer)
        except DataError as e:
            raise CheckpointError(f"{Path(source) / TOKENIZER_FILE}: {e}") from None
        check_fits(tokenizer, config.vocab_size, source)
    dtype = np.dtype(dtype)
    tensors = {name: np.asarray(t, dtype=dtype) for name, t in ckpt.model.items()}   # no copy when already dtype
    return SavedGPT(config=config, dtype=dtype, lora=lora, tensors=tensors, tokenizer=tokenizer,
                    tokenizer_json=ckpt.tokenizer)
