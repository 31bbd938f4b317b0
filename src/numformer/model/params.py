"""Parameters in one flat buffer, and the one place that knows their names.

Every parameter is a named view into one contiguous array, with the gradients (and the optimizer's
moments) in arrays of the same layout. AdamW, zero-grad, clipping, checkpointing and the
data-parallel all-reduce then each become one vectorised operation over one array.

Names. A model family names its parameters as its Hugging Face checkpoints do, and its table here
(a `Family`) is the only place that spells them: the layers outside the blocks and the layers of
one block, in buffer order, each with its kind (an embedding, a linear map, a norm). A parameter
is a layer's weight, its bias, or an adapter's A or B; `Family.params(config)` describes each one
(`Param`: name, shape, layer, kind, part, block), and `Family.name(layer, part, block)` builds
one name. Every other module reads and builds names through these.

    GPT2   transformer.wte.weight, transformer.h.{i}.attn.c_attn.weight, ...   numformer's GPT
    LLAMA  model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight, ..., lm_head.weight
                                                                              numformer's Llama
    BERT   embeddings.word_embeddings.weight, encoder.layer.{i}.attention.self.query.weight, ...
                                                                              the encoder

A new family is one more table; FAMILIES holds the decoders' by the name their configs give
(`config.family`), and `family_of(config)` finds a config's. Every weight is stored in PyTorch's
Linear layout (out, in); GPT-2's Conv1D files store (in, out) and are transposed on import and
export (numformer.interop.gpt2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from numformer.errors import CheckpointError
from numformer.model.config import GPTConfig

EMBEDDING, LINEAR, NORM = "embedding", "linear", "norm"                 # what a layer is
WEIGHT, BIAS, LORA_A, LORA_B = "weight", "bias", "lora_A", "lora_B"     # what part of it a parameter is


def _always(config) -> bool:
    return True


@dataclass(frozen=True)
class Layer:
    """One row of a family's table.

    name: the layer as the family's checkpoints spell it, inside its block ("attn.c_attn") or
    outside the blocks ("wte"). shape(config): its weight's shape: (rows, C) for an embedding,
    (out, in) for a linear map, (C,) for a norm's gain. residual: a linear map whose output is
    added to the residual stream. present(config): whether a model of that config has it.
    bias(config): whether it has a bias, where that is not the family's rule for all its linear
    maps and norms (Qwen2's q, k and v projections)."""

    name: str
    kind: str
    shape: Callable[[object], tuple[int, ...]]
    residual: bool = False
    present: Callable[[object], bool] = _always
    bias: Callable[[object], bool] | None = None


@dataclass(frozen=True)
class Param:
    """What one parameter is: its full name and shape, its layer (the table's name and kind), which
    part of the layer it is (WEIGHT, BIAS, LORA_A, LORA_B), and its block (None outside the blocks)."""

    name: str
    shape: tuple[int, ...]
    layer: str
    kind: str
    part: str
    block: int | None
    residual: bool = False


class Family:
    """A model family's parameter names: `top` + layer for the layers outside the blocks,
    `block.format(i)` + layer inside block i, then "." + the part.

    embeddings, layers, final: the table's rows, in buffer order (the layers before the blocks,
    one block's, the layers after them); n_blocks(config): how many blocks; bias(config): whether
    linear maps and norms have biases (a layer's own `bias` rule overrides it). head: the name of
    the LM head tensor in the family's files (GPT-2: numformer ties the head to the token
    embedding and stores none; Llama: a parameter unless tied); buffers: tensors of each block in
    the family's files that are not parameters. lora_targets: the names --lora_targets gives the
    linear layers of a block, each to the layer's name in the table (by default the layer's own)."""

    def __init__(self, *, top: str, block: str, embeddings, layers, final, n_blocks, bias,
                 head: str | None = None, buffers: tuple[str, ...] = (), lora_targets: dict | None = None):
        self.top, self.block = top, block
        self.embeddings, self.layers, self.final = tuple(embeddings), tuple(layers), tuple(final)
        self.n_blocks, self.bias = n_blocks, bias
        self.head, self.buffers = head, tuple(buffers)
        self.lora_targets = dict(lora_targets) if lora_targets is not None else \
            {layer.name: layer.name for layer in self.layers if layer.kind == LINEAR}
        self._outside = {layer.name: layer for layer in self.embeddings + self.final}
        self._inside = {layer.name: layer for layer in self.layers}
        before, after = block.split("{}")
        self._block_re = re.compile(re.escape(before) + r"(\d+)" + re.escape(after))
        # a block's index in a tensor name, whether or not the name starts with `top`
        self.block_pattern = r"(?:^|\.)" + re.escape(before.removeprefix(top)) + r"(\d+)" + re.escape(after)

    # ------------------------------------------------------------------------- one name

    def layer(self, name: str) -> Layer:
        """The table's row of layer `name` (of a block, or outside the blocks)."""
        row = self._inside.get(name) or self._outside.get(name)
        if row is None:
            raise KeyError(f"no layer {name!r}; the table has {', '.join([*self._outside, *self._inside])}")
        return row

    def prefix(self, block: int | None = None) -> str:
        """What the names of block `block` (or, for None, of the layers outside it) start with."""
        return self.top if block is None else self.block.format(block)

    def name(self, layer: str, part: str = WEIGHT, block: int | None = None) -> str:
        """The full name of `part` of `layer`: a layer of block `block`, or with block None a layer
        outside the blocks. KeyError for a layer the table does not have there."""
        if layer not in (self._outside if block is None else self._inside):
            where = "outside the blocks" if block is None else "in a block"
            raise KeyError(f"no layer {layer!r} {where}; the table has "
                           f"{', '.join(self._outside if block is None else self._inside)}")
        return f"{self.prefix(block)}{layer}.{part}"

    def block_of(self, name: str) -> int | None:
        """The block a full name belongs to, or None for a name outside the blocks."""
        m = self._block_re.match(name)
        return int(m.group(1)) if m else None

    def is_buffer(self, name: str) -> bool:
        """True for a name in `buffers` of some block (a tensor of the family's files, not a parameter)."""
        m = self._block_re.match(name)
        return m is not None and name[m.end():] in self.buffers

    # ------------------------------------------------------------------------- every name

    def has_bias(self, layer: Layer, config) -> bool:
        """Whether `layer` has a bias in a model of `config`: its own rule, else the family's."""
        return layer.kind != EMBEDDING and (layer.bias if layer.bias is not None else self.bias)(config)

    def params(self, config) -> list[Param]:
        """Every parameter of a model of `config`, in buffer order: the embeddings, block 0's
        layers, block 1's, ..., the final layers; in each layer the weight, then the bias where
        it has one (has_bias)."""
        out: list[Param] = []

        def add(layer: Layer, block: int | None) -> None:
            if not layer.present(config):
                return
            shape = tuple(layer.shape(config))
            parts = [(WEIGHT, shape)]
            if self.has_bias(layer, config):
                parts.append((BIAS, shape[:1]))
            for part, s in parts:
                out.append(Param(f"{self.prefix(block)}{layer.name}.{part}", s, layer.name, layer.kind, part,
                                 block, layer.residual))

        for layer in self.embeddings:
            add(layer, None)
        for i in range(self.n_blocks(config)):
            for layer in self.layers:
                add(layer, i)
        for layer in self.final:
            add(layer, None)
        return out

    def shapes(self, config) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter, in buffer order."""
        return {p.name: p.shape for p in self.params(config)}

    def adapters(self, config, rank: int, targets) -> list[Param]:
        """The low-rank adapters (numformer.ops.lora) on the linear layers `targets` (names of
        lora_targets) of every block, block by block and in table order: `{layer}.lora_A`
        (r, C_in), then `{layer}.lora_B` (C_out, r), for a layer whose weight is (C_out, C_in)."""
        layers = {self.lora_targets[t] for t in targets}
        out = []
        for i in range(self.n_blocks(config)):
            for layer in self.layers:
                if layer.name in layers:
                    n_out, n_in = layer.shape(config)
                    for part, shape in ((LORA_A, (rank, n_in)), (LORA_B, (n_out, rank))):
                        out.append(Param(self.name(layer.name, part, i), shape, layer.name, layer.kind, part, i))
        return out


def _C(config) -> tuple[int]:
    return (config.n_embd,)


GPT2 = Family(
    top="transformer.",
    block="transformer.h.{}.",
    embeddings=(
        Layer("wte", EMBEDDING, lambda c: (c.vocab_size, c.n_embd)),        # tokens; also the tied LM head
        Layer("wpe", EMBEDDING, lambda c: (c.block_size, c.n_embd),        # learned positions
              present=lambda c: c.pos_encoding == "learned"),
    ),
    layers=(
        Layer("ln_1", NORM, _C),
        Layer("attn.c_attn", LINEAR, lambda c: (3 * c.n_embd, c.n_embd)),  # q, k, v side by side
        Layer("attn.c_proj", LINEAR, lambda c: (c.n_embd, c.n_embd), residual=True),
        Layer("ln_2", NORM, _C),
        Layer("mlp.c_fc", LINEAR, lambda c: (4 * c.n_embd, c.n_embd)),
        Layer("mlp.c_proj", LINEAR, lambda c: (c.n_embd, 4 * c.n_embd), residual=True),
    ),
    final=(Layer("ln_f", NORM, _C),),
    n_blocks=lambda c: c.n_layer,
    bias=lambda c: c.bias,
    head="lm_head.weight",
    buffers=("attn.bias", "attn.masked_bias"),    # the causal mask, as older transformers saved it
)


def _H(config) -> tuple[int]:
    return (config.hidden_size,)


def _HxH(config) -> tuple[int, int]:
    return (config.hidden_size, config.hidden_size)


BERT = Family(
    top="",
    block="encoder.layer.{}.",
    embeddings=(
        Layer("embeddings.word_embeddings", EMBEDDING, lambda c: (c.vocab_size, c.hidden_size)),
        Layer("embeddings.position_embeddings", EMBEDDING, lambda c: (c.max_position_embeddings, c.hidden_size)),
        Layer("embeddings.token_type_embeddings", EMBEDDING, lambda c: (c.type_vocab_size, c.hidden_size)),
        Layer("embeddings.LayerNorm", NORM, _H),
    ),
    layers=(
        Layer("attention.self.query", LINEAR, _HxH),
        Layer("attention.self.key", LINEAR, _HxH),
        Layer("attention.self.value", LINEAR, _HxH),
        Layer("attention.output.dense", LINEAR, _HxH, residual=True),
        Layer("attention.output.LayerNorm", NORM, _H),
        Layer("intermediate.dense", LINEAR, lambda c: (c.intermediate_size, c.hidden_size)),
        Layer("output.dense", LINEAR, lambda c: (c.hidden_size, c.intermediate_size), residual=True),
        Layer("output.LayerNorm", NORM, _H),
    ),
    final=(),
    n_blocks=lambda c: c.num_hidden_layers,
    bias=_always,
)

# BERT's three attention input maps, whose weights the encoder stacks into one (3C, C) matrix
BERT_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


def _q_width(config) -> int:
    return config.n_head * config.head_size          # nh · hs = C


def _kv_width(config) -> int:
    return config.n_kv_head * config.head_size       # nkv · hs


def _qkv_bias(config) -> bool:
    return config.attention_bias


LLAMA = Family(
    top="",
    block="model.layers.{}.",
    embeddings=(
        Layer("model.embed_tokens", EMBEDDING, lambda c: (c.vocab_size, c.n_embd)),   # tokens; the LM head when tied
    ),
    layers=(
        Layer("input_layernorm", NORM, _C),                                          # RMSNorm: a gain, no bias
        Layer("self_attn.q_proj", LINEAR, lambda c: (_q_width(c), c.n_embd), bias=_qkv_bias),
        Layer("self_attn.k_proj", LINEAR, lambda c: (_kv_width(c), c.n_embd), bias=_qkv_bias),
        Layer("self_attn.v_proj", LINEAR, lambda c: (_kv_width(c), c.n_embd), bias=_qkv_bias),
        Layer("self_attn.o_proj", LINEAR, lambda c: (c.n_embd, _q_width(c)), residual=True),
        Layer("post_attention_layernorm", NORM, _C),
        Layer("mlp.gate_proj", LINEAR, lambda c: (c.n_hidden, c.n_embd)),
        Layer("mlp.up_proj", LINEAR, lambda c: (c.n_hidden, c.n_embd)),
        Layer("mlp.down_proj", LINEAR, lambda c: (c.n_embd, c.n_hidden), residual=True),
    ),
    final=(
        Layer("model.norm", NORM, _C),
        Layer("lm_head", LINEAR, lambda c: (c.vocab_size, c.n_embd), present=lambda c: not c.tie_embeddings),
    ),
    n_blocks=lambda c: c.n_layer,
    bias=lambda c: False,
    head="lm_head.weight",
    buffers=("self_attn.rotary_emb.inv_freq",),   # RoPE's ω, as older transformers saved it
    lora_targets={name.rsplit(".", 1)[1]: name for name in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")},    # as Hugging Face (PEFT) names them
)

# The decoder families by the name their configs carry (config.family).
FAMILIES = {"gpt2": GPT2, "llama": LLAMA}


def family_of(config) -> Family:
    """The parameter table of the model that `config` (a GPTConfig or LlamaConfig) describes."""
    return FAMILIES[config.family]


# The GPT's layers that can have a low-rank adapter (its linear maps), and those that get one by default.
LORA_TARGETS = tuple(GPT2.lora_targets)
DEFAULT_LORA_TARGETS = ("attn.c_attn", "attn.c_proj")
# Every family's target names, and the Llama's default (PEFT's for Llama: the q and v projections).
ALL_LORA_TARGETS = tuple(dict.fromkeys(t for f in FAMILIES.values() for t in f.lora_targets))
DEFAULT_LORA_TARGETS_OF = {"gpt2": DEFAULT_LORA_TARGETS, "llama": ("q_proj", "v_proj")}


def gpt_param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every GPT parameter, in buffer order. The LM head is tied to wte."""
    return GPT2.shapes(config)


def lora_param_shapes(config: GPTConfig, rank: int, targets) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the low-rank adapters (numformer.ops.lora) on the `targets` layers of every
    block: `{layer}.lora_A` (r, C_in) and `{layer}.lora_B` (C_out, r), beside the layer's weight
    (C_out, C_in). They live in a flat buffer of their own, so that fine-tuning with adapters
    needs gradients and optimizer moments for them alone."""
    return {p.name: p.shape for p in GPT2.adapters(config, rank, targets)}


def check_tensors(tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """CheckpointError (one line naming `source`) unless `tensors` has exactly the names of
    `expected`, each with its shape."""
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"{source}: missing tensor {missing[0]}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [n for n in tensors if n not in expected]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]} for this config")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                                  f"the config needs {shape}")


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
        """A zeroed buffer with the same layout (gradients, optimizer moments). np.zeros, not
        zeros_like: its pages are the system's zero pages until written, so a model that only
        runs inference never holds its gradient buffer in memory."""
        return FlatParams(self.shapes, self.flat.dtype, np.zeros(self.flat.shape, dtype=self.flat.dtype))

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
