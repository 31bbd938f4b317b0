"""Parameters in one flat buffer.

Every parameter is a named view into one contiguous array, with the gradients (and the optimizer's
moments) in arrays of the same layout. AdamW, zero-grad, clipping, checkpointing and the
data-parallel all-reduce then each become one vectorised operation over one array.

This module is the one place that knows the parameter names. They follow Hugging Face GPT-2
(`transformer.h.0.attn.c_attn.weight`, ...), but every weight is stored in PyTorch's Linear layout
(out, in); GPT-2's Conv1D files store (in, out) and are transposed on import and export.
"""

from __future__ import annotations

import math

import numpy as np

from numformer.model.config import GPTConfig


def gpt_param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every GPT parameter, in buffer order. The LM head is tied to wte."""
    C, V = config.n_embd, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, C)}
    if config.pos_encoding == "learned":
        shapes["transformer.wpe.weight"] = (config.block_size, C)

    def linear(name, n_out, n_in):
        shapes[f"{name}.weight"] = (n_out, n_in)
        if config.bias:
            shapes[f"{name}.bias"] = (n_out,)

    def layernorm(name):
        shapes[f"{name}.weight"] = (C,)
        if config.bias:
            shapes[f"{name}.bias"] = (C,)

    for i in range(config.n_layer):
        h = f"transformer.h.{i}"
        layernorm(f"{h}.ln_1")
        linear(f"{h}.attn.c_attn", 3 * C, C)
        linear(f"{h}.attn.c_proj", C, C)
        layernorm(f"{h}.ln_2")
        linear(f"{h}.mlp.c_fc", 4 * C, C)
        linear(f"{h}.mlp.c_proj", C, 4 * C)
    layernorm("transformer.ln_f")
    return shapes


LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")   # the layers an adapter can adapt


def lora_param_shapes(config: GPTConfig, rank: int, targets) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the low-rank adapters (numformer.ops.lora) on the `targets` layers of every
    block: `{layer}.lora_A` (r, C_in) and `{layer}.lora_B` (C_out, r), beside the layer's weight
    (C_out, C_in). They live in a flat buffer of their own, so that fine-tuning with adapters
    needs gradients and optimizer moments for them alone."""
    base = gpt_param_shapes(config)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(config.n_layer):
        for layer in LORA_TARGETS:          # buffer order: block by block, layer by layer
            if layer in targets:
                n_out, n_in = base[f"transformer.h.{i}.{layer}.weight"]
                shapes[f"transformer.h.{i}.{layer}.lora_A"] = (rank, n_in)
                shapes[f"transformer.h.{i}.{layer}.lora_B"] = (n_out, rank)
    return shapes


class FlatParams:
    """One contiguous buffer `flat` and a dict `views` of named array views into it.

    >>> p = FlatParams({"a": (2, 3), "b": (3,)}, np.float32)
    >>> p.views["a"].base is p.flat
    True
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype, flat: np.ndarray | None = None):
        self.shapes = dict(shapes)
        self.size = sum(math.prod(s) for s in self.shapes.values())
        if flat is None:
            flat = np.zeros(self.size, dtype=dtype)
        elif flat.shape != (self.size,):
            raise ValueError(f"flat buffer has shape {flat.shape}, layout needs ({self.size},)")
        self.flat = flat
        self.views: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            self.views[name] = flat[offset:offset + n].reshape(shape)
            offset += n

    def like(self) -> "FlatParams":
        """A zeroed buffer with the same layout (gradients, optimizer moments)."""
        return FlatParams(self.shapes, self.flat.dtype, np.zeros_like(self.flat))

    def mask(self, predicate) -> np.ndarray:
        """A flat float mask: 1 on the elements of parameters where predicate(name, shape) holds."""
        out = FlatParams(self.shapes, self.flat.dtype, np.zeros_like(self.flat))
        for name, shape in self.shapes.items():
            if predicate(name, shape):
                out.views[name][...] = 1
        return out.flat

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def __iter__(self):
        return iter(self.views)

    def items(self):
        return self.views.items()
