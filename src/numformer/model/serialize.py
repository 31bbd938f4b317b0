"""A model's checkpoint folder: what is in it, written and read as plain data (numformer.checkpoint
writes and reads the folder).

config.json holds {"format": ..., "model": the config's fields, "dtype": ..., "train": ...}, where
the format names the family: "numformer-gpt" for a GPT (GPTConfig), "numformer-llama" for a
Llama (LlamaConfig); model.safetensors the parameters by their Hugging Face names; tokenizer.json
the tokenizer. A model with low-rank adapters also has "lora": {"rank", "alpha", "targets"} in
config.json and its adapters' A and B in model.safetensors (`transformer.h.{i}.{layer}.lora_A`,
`model.layers.{i}.{layer}.lora_B`, ...).

This module knows the files, not the models: `write_model` takes a config and named tensors,
`read_model` gives them back checked (`SavedModel`), and each model's save and load
(numformer.model.gpt, numformer.model.llama) are built on the two. So the models import this
module and never the other way round. `read_gpt`, `write_gpt` and `saved_gpt` are the same for a
GPT alone (numformer.interop.gpt2 exports and imports GPT-2).
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
from numformer.model.config import CONFIGS, InvalidConfig
from numformer.model.params import check_tensors, family_of

FORMAT = "numformer-gpt"                                   # a GPT's checkpoint
FORMATS = {"gpt2": FORMAT, "llama": "numformer-llama"}     # family -> the format its checkpoints name
FAMILY_OF_FORMAT = {f: family for family, f in FORMATS.items()}
DTYPES = ("float32", "float64")


@dataclass
class SavedModel:
    """A checkpoint, read and checked: its config (GPTConfig or LlamaConfig: config.family says
    which), dtype and adapters (LoRAConfig or None), its tensors by name (every parameter and
    adapter the config describes, each of its shape, in that dtype), its tokenizer (None if it has
    none) and that tokenizer's JSON text as the file holds it."""

    config: object
    dtype: np.dtype
    lora: LoRAConfig | None
    tensors: dict[str, np.ndarray]
    tokenizer: object | None
    tokenizer_json: str


SavedGPT = SavedModel


def checkpoint_family(doc) -> str | None:
    """The family ("gpt2", "llama") a checkpoint's config.json (a parsed dict) names, or None for
    a config.json that is not a numformer checkpoint's."""
    return FAMILY_OF_FORMAT.get(doc.get("format")) if isinstance(doc, dict) else None


def model_config(family: str, fields: dict):
    """The config of a `family` model from the fields config.json records; InvalidConfig for a bad one."""
    return CONFIGS[family].from_dict(fields)


def save_model(model, path, *, tokenizer: str | None = None, optimizer: dict | None = None,
               train_state: dict | None = None) -> None:
    """Write `model`'s checkpoint folder (GPT.save, Llama.save): weights, config, tokenizer and,
    when given, optimizer moments and training state."""
    write_model(path, model.config, model.state_dict(), dtype=model.dtype, lora=model.lora, tokenizer=tokenizer,
                optimizer=optimizer, train_state=train_state)


def write_model(path, config, tensors: dict[str, np.ndarray], *, dtype, lora: LoRAConfig | None = None,
                tokenizer: str | None = None, optimizer: dict | None = None, train_state: dict | None = None) -> None:
    """Write a checkpoint folder of a model with `config` whose parameters (and adapters) are `tensors`."""
    doc = {"format": FORMATS[config.family], "model": config.to_dict(), "dtype": np.dtype(dtype).name}
    if lora is not None:
        doc["lora"] = lora.to_dict()
    if train_state is not None:
        doc["train"] = train_state
    save_checkpoint(path, model=tensors, config=doc, tokenizer=tokenizer if tokenizer is not None else "null",
                    optimizer=optimizer)


def read_model(path, *, dtype=None, families=tuple(FORMATS)) -> SavedModel:
    """Read and check a checkpoint folder written by write_model (or `numformer train`) of one of
    `families`."""
    ckpt = load_checkpoint(path, before_reading=lambda config, shapes, model_bytes: check_before_loading(
        path, config, shapes, model_bytes, dtype))
    return saved_model(ckpt, source=str(path), dtype=dtype, families=families)


# A GPT's, as numformer.interop.gpt2 and older callers name them
save_gpt, write_gpt = save_model, write_model


def read_gpt(path, *, dtype=None) -> SavedModel:
    """Read and check a GPT's checkpoint folder (read_model for the GPT family alone)."""
    return read_model(path, dtype=dtype, families=("gpt2",))


def check_before_loading(path, config: dict, shapes: dict | None, model_bytes: int, dtype=None) -> None:
    """Refuse, before any weight is read or allocated, a checkpoint whose config.json describes
    another model than its model.safetensors holds (`shapes`, from the file's header), or whose
    weights would not fit in the memory this machine has. Anything unreadable is left for the
    rest of the load to report. (load_checkpoint calls it with the config and header it read.)"""
    path = Path(path)
    family = checkpoint_family(config)
    if shapes is None or family is None or not isinstance(config.get("model"), dict):
        return
    try:
        model = model_config(family, config["model"])
        itemsize = np.dtype(dtype or config.get("dtype", "float32")).itemsize
    except (InvalidConfig, TypeError):     # the config's values, or a dtype NumPy does not know
        return
    memory.check_counts(memory.model_params(model) + adapter_params(model, config.get("lora")),
                        memory.count(shapes), path / CONFIG_FILE, path / MODEL_FILE, _described(model), exact=True)
    memory.refuse_if_too_big("loading this model", [("the file", model_bytes),
                                                    ("weights", memory.model_params(model) * itemsize)],
                             "free some memory or use a machine with more")


def _described(config) -> str:
    return (f"n_layer {config.n_layer}, n_embd {config.n_embd}, vocab_size {config.vocab_size}, "
            f"block_size {config.block_size}")


def saved_gpt(ckpt, source: str, dtype=None) -> SavedModel:
    """saved_model for a GPT's checkpoint alone."""
    return saved_model(ckpt, source, dtype, families=("gpt2",))


def saved_model(ckpt, source: str, dtype=None, families=tuple(FORMATS)) -> SavedModel:
    """The checkpoint that numformer.checkpoint.load_checkpoint read from `source`, checked:
    CheckpointError (one line naming the file) for anything a model of one of `families` cannot
    be built from."""
    cfg = ckpt.config
    family = checkpoint_family(cfg)
    if family is None or not isinstance(cfg.get("model"), dict):
        expected = " or ".join(f'"format": "{FORMATS[f]}"' for f in families)
        raise CheckpointError(f"{source}: config.json is not a numformer model checkpoint "
                              f"(expected {expected} and a \"model\" section)")
    if family not in families:
        raise CheckpointError(f"{source}: config.json is a numformer {family} checkpoint; this needs a "
                              f"{' or '.join(families)} model")
    try:
        config = model_config(family, cfg["model"])
    except InvalidConfig as e:
        raise CheckpointError(f"{Path(source) / CONFIG_FILE}: bad model config: {e}") from None
    dtype = dtype or cfg.get("dtype", "float32")
    if dtype not in DTYPES + (np.float32, np.float64):
        raise CheckpointError(f"{source}: config.json gives dtype {dtype!r}; numformer models are "
                              f"float32 or float64")
    memory.check_counts(memory.model_params(config) + adapter_params(config, cfg.get("lora")),
                        sum(t.size for t in ckpt.model.values()),
                        f"{source}/config.json", f"{source}/model.safetensors", _described(config), exact=True)
    lora = None
    if cfg.get("lora") is not None:
        try:
            lora = LoRAConfig.from_dict(cfg["lora"])
            lora.check_fits(config)
        except UsageError as e:
            raise CheckpointError(f"{source}: bad lora section in config.json: {e}") from None
    table = family_of(config)
    expected = table.shapes(config)
    if lora is not None:
        expected.update({p.name: p.shape for p in table.adapters(config, lora.rank, lora.targets)})
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
    return SavedModel(config=config, dtype=dtype, lora=lora, tensors=tensors, tokenizer=tokenizer,
                    tokenizer_json=ckpt.tokenizer)
