"""BERT checkpoints from Hugging Face format: a folder of config.json + model.safetensors gives
numformer's encoder (numformer.model.encoder), which sentence embeddings run on
(numformer.sentence).

Tensors keep Hugging Face's names (numformer.model.params.BERT), with an optional `bert.` prefix
(a BertFor... model saves its encoder under it) and any other tensor (a pooler, a task head)
ignored. Every tensor the config describes must be there, of its shape, floating point and
finite; a folder with only a pickle (pytorch_model.bin) is refused without opening it.

Config (config.json of Hugging Face -> EncoderConfig):

    model_type                 must be "bert"
    vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
    max_position_embeddings, type_vocab_size      the same (required positive integers)
    layer_norm_eps             the same (default 1e-12)
    hidden_act                 gelu: "gelu" -> "exact", "gelu_new", "gelu_pytorch_tanh" -> "tanh"
    position_embedding_type    must be "absolute" (the default)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from numformer.checkpoint import PICKLE_SUFFIXES, pickle_refusal, read_json, read_safetensors
from numformer.errors import CheckpointError
from numformer.model import memory
from numformer.model.encoder import Encoder, EncoderConfig, check_tensors
from numformer.model.params import BERT

# config.json model_type values whose weights have exactly BERT's names, shapes and formulas.
BERT_MODEL_TYPES = ("bert",)

# config.json hidden_act -> gelu.forward(form=...)
HIDDEN_ACTS = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WRAPPER_PREFIX = "bert."      # a BertFor... model's names of its encoder


def load_bert(folder, dtype=np.float32) -> Encoder:
    """The encoder of a Hugging Face BERT folder (config.json + model.safetensors)."""
    folder = Path(folder)
    weights_file = find_weights(folder)
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {folder} (a Hugging Face BERT folder has {CONFIG_FILE} "
                              f"next to {WEIGHTS_FILE})")
    config = encoder_config_from_hf(read_json(config_file), source=str(config_file))
    check_before_reading(config, config_file, weights_file, np.dtype(dtype).itemsize)
    tensors = read_safetensors(weights_file)  # CheckpointError naming the file if damaged
    params = select_bert_tensors(tensors, config, source=str(weights_file))
    return Encoder(config, params, dtype=dtype)


def encoder_config_from_hf(d: dict, source: str = CONFIG_FILE) -> EncoderConfig:
    """Read a Hugging Face BERT config.json dict; CheckpointError naming the key if it is unusable."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object, found {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type is None:
        raise CheckpointError(f"{source}: no 'model_type' key; numformer's encoder reads BERT models "
                              f"(model_type {' or '.join(repr(t) for t in BERT_MODEL_TYPES)})")
    if model_type not in BERT_MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not a BERT model; numformer's encoder "
                              f"reads model_type {' or '.join(repr(t) for t in BERT_MODEL_TYPES)}")
    position_type = d.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type {position_type!r} is not supported "
                              "(only 'absolute' learned positions)")
    act = d.get("hidden_act", "gelu")
    if act not in HIDDEN_ACTS:
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (choose from {', '.join(HIDDEN_ACTS)})")

    values = {}
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        if name not in d:
            raise CheckpointError(f"{source}: missing key {name!r}")
        value = d[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{source}: {name!r} must be a positive integer, found {value!r}")
        values[name] = value
    eps = d.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise CheckpointError(f"{source}: 'layer_norm_eps' must be a positive number, found {eps!r}")
    if values["hidden_size"] % values["num_attention_heads"]:
        raise CheckpointError(f"{source}: 'hidden_size' ({values['hidden_size']}) is not divisible by "
                              f"'num_attention_heads' ({values['num_attention_heads']})")
    return EncoderConfig(**values, layer_norm_eps=float(eps), gelu=HIDDEN_ACTS[act])


def find_weights(folder: Path) -> Path:
    """The folder's model.safetensors; a pickle-only folder is refused, never unpickled."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        return weights
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise pickle_refusal(pickles[0], context=f"no {WEIGHTS_FILE} in {folder}")
    raise CheckpointError(f"no weights in {folder}: expected {WEIGHTS_FILE}")


def check_before_reading(config: EncoderConfig, config_file: Path, weights_file: Path, itemsize: int) -> None:
    """Refuse, from the safetensors header alone, a config.json that asks for more layers than the
    weights hold (num_hidden_layers 1000000000, say) and weights that would not fit in this
    machine's memory. The tensor-by-tensor check (select_bert_tensors) comes after the read."""
    shapes = memory.header_shapes(weights_file)
    if shapes is None:
        return  # read_safetensors says what is wrong with the file
    memory.check_blocks(config.num_hidden_layers, "num_hidden_layers", shapes, BERT.block_pattern,
                        config_file, weights_file)
    memory.refuse_if_too_big("loading this model", [("the file", memory.file_bytes([weights_file])),
                                                    ("weights", memory.count(shapes) * itemsize)],
                             "free some memory or use a machine with more")


def select_bert_tensors(tensors: dict[str, np.ndarray], config: EncoderConfig, source: str) -> dict[str, np.ndarray]:
    """The encoder's tensors by their bare names, with an optional `bert.` prefix (BertFor... models) removed."""
    expected = BERT.shapes(config)
    probe = BERT.name("embeddings.word_embeddings")
    prefix = WRAPPER_PREFIX if probe not in tensors and WRAPPER_PREFIX + probe in tensors else ""
    found = {name: tensors[prefix + name] for name in expected if prefix + name in tensors}
    check_tensors(found, expected, source, prefix=prefix)
    return found
