"""Quantized weights for a decoder (GPT or Llama): what `model.quantize("int8")` does, shared by
both families.

`model.quantize(fmt)`, fmt "int8" or "bf16" (numformer.ops.quant; "none" changes nothing), stores
every linear map's weight and the token embedding in that format, in place, for inference:

- the float32 weights are freed: `model.params` keeps the rest (norms, biases, a learned position
  table) in a new, small float32 buffer, and `model.quantized` has the quantized weights by name;
- the ops take them where they took the float32 ones (ops.linear: y = x deq(W)ᵀ + b, read as
  stored by the fast op set; ops.embedding: deq(table)[ids], only the rows looked up), so the
  model's own block_forward runs unchanged, with float32 activations;
- the token embedding is quantized whether or not it is the LM head: tied (GPT-2, a tied Llama),
  one quantized table serves the lookup and the head, the largest matrix of a model with a large
  vocabulary (38.6 M of GPT-2's 124 M weights), which a decoded token reads in full; untied, the
  lookup reads one row a token, and its table is quantized for the memory it takes. A position
  table is looked up a row a token and stays float32 (it is small);
- adapters are merged into their weights first (W + (α/r)·B A, as `convert --to_hf` merges them);
- the model then runs inference only: backward and save refuse in one line.

`model.dequantized()` is the float32 model of the same (rounded) weights: it computes the
quantized model's function up to float32 rounding, decodes the same greedy tokens
(tests/model/test_quantized.py), and is what `numformer explore --quantize` draws.
"""

from __future__ import annotations

import numpy as np

from numformer.model.adapters import merged_state_dict
from numformer.model.params import LINEAR, WEIGHT, FlatParams, check_tensors, family_of
from numformer.ops import quant

QUANTIZE = ("none", *quant.FORMATS, "keep")   # the choices of quantize= and --quantize
# "keep": a GGUF file's Q4_1 and Q8_0 weights as the file stores them (numformer.model.llama,
# Llama.from_gguf); a model with float weights has nothing to keep, and keeps them as "none" does.


def check_quantize(fmt: str) -> str:
    """fmt itself, or ValueError (one line) unless it is one of QUANTIZE."""
    if fmt not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, got {fmt!r}")
    return fmt


class QuantizedWeights:
    """The quantization methods of GPT and Llama. A class using it sets, in __init__ before
    building its block views, `quantization = "none"` and `quantized = {}`, and has `config`,
    `dtype`, `ops_name`, `params`, `trainable`, `grads`, `lora`, `adapters`, `_blocks`, `_lora`
    and `_block_params(i)` (which must look in `quantized` first)."""

    token_embedding: str                 # the token embedding's parameter name (set by the class)

    def quantize(self, fmt: str):
        """Store the weights of every linear map and the token embedding as `fmt`, "int8" or
        "bf16", in place, and free the float32 ones; "none" changes nothing, nor does "keep" (a model
        of float weights has no file's blocks to keep). Returns the model.
        ValueError for another format, a float64 model, or a model quantized already."""
        if check_quantize(fmt) in ("none", "keep"):
            return self
        if self.quantization != "none":
            raise ValueError(f"the model is quantized already ({self.quantization})")
        if self.dtype != np.float32:
            raise ValueError(f"quantized weights serve float32 inference; this model is {self.dtype}")
        tensors = merged_state_dict(self) if self.lora is not None else self.state_dict()
        self.store_quantized({name: quant.quantize(tensors[name], fmt) for name in self.quantizable()}, tensors, fmt)
        return self

    def load_quantized(self, tensors: dict, fmt: str, source: str):
        """load_state_dict(tensors, source), then quantize(fmt), with the same result; returns the
        model. For "int8" or "bf16" on a float32 model without adapters, the weights are quantized
        straight from `tensors`, so the model's float32 buffer (made, never written, by the
        constructor with init=False) is never filled: a checkpoint loads quantized at the memory of
        the tensors read and the quantized weights, not of the float32 model as well."""
        if check_quantize(fmt) in quant.FORMATS and self.lora is None and self.dtype == np.float32:
            check_tensors(tensors, {name: v.shape for name, v in self.state_dict().items()}, source)
            self.store_quantized({name: quant.quantize(tensors[name], fmt) for name in self.quantizable()}, tensors, fmt)
            return self
        self.load_state_dict(tensors, source=source)
        return self.quantize(fmt)

    def quantizable(self) -> list[str]:
        """The weights a quantized model stores quantized: every linear map's and the token embedding."""
        return [p.name for p in family_of(self.config).params(self.config)
                if (p.kind == LINEAR and p.part == WEIGHT) or p.name == self.token_embedding]

    def store_quantized(self, quantized: dict, tensors, fmt: str) -> None:
        """Make `quantized` (name -> quantized weight) the model's weights of those names, and give the
        other parameters a new float32 buffer of their own, filled from `tensors` (name -> array, or a
        function of the name); the old buffer, with every float weight, is freed. `fmt` names it all."""
        family = family_of(self.config)
        rest = FlatParams({p.name: p.shape for p in family.params(self.config) if p.name not in quantized},
                          self.dtype)
        for name, view in rest.items():
            view[...] = tensors(name) if callable(tensors) else tensors[name]
        del tensors
        self.params = self.trainable = rest          # the float32 buffer goes with the last view of it
        self.grads = rest.like()
        self.lora = self.adapters = None
        self.quantized, self.quantization = quantized, fmt
        self._blocks = [self._block_params(i) for i in range(self.config.n_layer)]
        self._lora = [None] * self.config.n_layer

    def dequantized(self):
        """A float32 model of the same class whose weights are this model's, dequantized: the
        function the quantized model computes, with float32 weights (for a model that is not
        quantized, a copy). Same op set and tokenizer."""
        model = type(self)(self.config, dtype=self.dtype, init=False, ops=self.ops_name, lora=self.lora)
        model.load_state_dict(self.state_dict(), source="the quantized model")
        model.tokenizer = self.tokenizer
        return model

    def dequantized_weights(self) -> dict:
        """The quantized weights by name, dequantized (new float32 arrays); empty when there are none."""
        return {name: quant.dequantize(w) for name, w in self.quantized.items()}

    def weight_bytes(self) -> int:
        """Bytes the model's parameters take: float ones at their dtype's size, quantized ones as stored."""
        return (self.params.flat.nbytes + (self.adapters.flat.nbytes if self.adapters is not None else 0)
                + sum(w.nbytes for w in self.quantized.values()))

    def quantized_params(self) -> int:
        """How many weights are quantized."""
        return sum(int(np.prod(w.shape)) for w in self.quantized.values())

    def tensor(self, name: str):
        """Parameter `name` as the model computes with it: its quantized weight where the model
        has one, else its float view."""
        q = self.quantized.get(name)
        return q if q is not None else self.params[name]

    def check_trainable(self) -> None:
        """RuntimeError (one line) for a quantized model: it has no gradients."""
        if self.quantization != "none":
            raise RuntimeError(f"the model's weights are quantized ({self.quantization}): it runs inference only, "
                               f"with no gradients; train the float32 model")

    def check_savable(self) -> None:
        """ValueError (one line) for a quantized model: its checkpoint is the float32 one."""
        if self.quantization != "none":
            raise ValueError(f"a quantized model ({self.quantization}) is not saved; save the float32 model and "
                             f"quantize it when loading (load(path, quantize=...))")

