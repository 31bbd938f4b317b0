"""The decoder families, and the one place that builds or loads a model of either.

    model = build(LlamaConfig(n_layer=2, n_kv_head=2))      # a Llama; build(GPTConfig()) a GPT
    model = load("out/best")                                # the family its config.json names

A config says its family (`config.family`: "gpt2" for GPTConfig, "llama" for LlamaConfig), and a
checkpoint's config.json says it in its format ("numformer-gpt", "numformer-llama";
numformer.model.serialize). Everything that takes "a model" (training, sampling, evaluation, the
threaded and MPI steps, LoRA) takes either: both classes have the same interface (see
numformer.model.llama).
"""

from __future__ import annotations

from numformer.model.gpt import GPT
from numformer.model.llama import Llama
from numformer.model.quantized import check_quantize
from numformer.model.serialize import FORMATS, read_model

MODELS = {"gpt2": GPT, "llama": Llama}
assert set(MODELS) == set(FORMATS)


def model_class(config) -> type:
    """The class that builds a model of `config` (GPT or Llama)."""
    return MODELS[config.family]


def build(config, **kwargs):
    """A model of `config`: GPT(config, **kwargs) or Llama(config, **kwargs) (dtype, seed, init,
    ops, lora)."""
    return model_class(config)(config, **kwargs)


def load(path, *, dtype=None, ops: str = "fast", families=tuple(MODELS), quantize: str = "none"):
    """The model in the checkpoint folder `path` (written by save or `numformer train`), of the
    family its config.json names, with its tokenizer (model.tokenizer, None if it has none).
    CheckpointError (one line) for a folder that is not the checkpoint of one of `families`.
    quantize: "none" (the default), "bf16" or "int8" stores the weights so for inference
    (numformer.model.quantized)."""
    check_quantize(quantize)
    saved = read_model(path, dtype=dtype, families=families)
    model = build(saved.config, dtype=saved.dtype, init=False, ops=ops, lora=saved.lora)
    model.load_quantized(saved.tensors, quantize, source=str(path))   # quantized as read: no float32 model
    del saved.tensors
    model.tokenizer = saved.tokenizer
    return model
