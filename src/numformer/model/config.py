"""The hyperparameters that fix a model's shape, one dataclass per family: GPTConfig (numformer's
GPT, GPT-2's shape) and LlamaConfig (Llama's shape: RMSNorm, RoPE, grouped-query attention,
SwiGLU; also Mistral's and Qwen2's). `family` (a class attribute, "gpt2" or "llama") says which
model a config builds; CONFIGS maps it back to the class.

The defaults are nanoGPT's CPU "baby GPT" on a character-level corpus. Every field's type and
range is checked when a config is made; a bad value raises InvalidConfig (a ValueError naming
the field), which the caller reports as the user's error in its own terms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np

from numformer.ops import positional

POS_ENCODINGS = ("sinusoidal", "learned")
# How token embedding and sinusoidal table P are added (see model/gpt.py, "Positions"):
# name -> (factor on wte[idx], divisor of P) as a function of the width C
SINUSOIDAL_FORMS = {
    "scaled": lambda C: (1.0, math.sqrt(C)),          # wte[idx] + P/√C, numformer's default
    "paper": lambda C: (math.sqrt(C), 1.0),           # √C·wte[idx] + P, Vaswani et al. §3.4
    "article": lambda C: (1.0, 1.0),                  # wte[idx] + P, the article read literally
}
GELUS = ("tanh", "exact")


class ConfigDict:
    """What GPTConfig and LlamaConfig share: the head size, and the round trip through a dict (the
    model part of a checkpoint's config.json)."""

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """The config of a dict of its fields (a missing key takes its default); InvalidConfig
        for an unknown key or a bad value."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidConfig(unknown[0], f"unknown {cls.__name__} key(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass
class GPTConfig(ConfigDict):
    family: ClassVar[str] = "gpt2"

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True               # biases in Linear and LayerNorm layers, as GPT-2 has them
    pos_encoding: str = "sinusoidal"  # "sinusoidal" (the article, formula 2) or "learned" (GPT-2)
    sinusoidal_form: str = "scaled"   # with sinusoidal positions: a key of SINUSOIDAL_FORMS
    gelu: str = "tanh"              # "tanh" (GPT-2's approximation) or "exact" (erf)
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InvalidConfig(name, f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise InvalidConfig("n_embd", f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not isinstance(self.bias, bool):     # the text "false" would read as true
            raise InvalidConfig("bias", f"bias must be true or false, got {self.bias!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise InvalidConfig("dropout", f"dropout must be a number in [0, 1), got {self.dropout!r}")
        for name, choices in (("pos_encoding", POS_ENCODINGS), ("sinusoidal_form", tuple(SINUSOIDAL_FORMS)),
                              ("gelu", GELUS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise InvalidConfig(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if not _is_number(self.layer_norm_eps) or not 0 < self.layer_norm_eps < math.inf:
            raise InvalidConfig("layer_norm_eps",
                                f"layer_norm_eps must be a positive finite number, got {self.layer_norm_eps!r}")

# Llama's SwiGLU width: 2/3 of the GPT's 4C (three matrices instead of two, about the same
# parameters), rounded up to a multiple of 256 (Meta's llama/model.py, FeedForward: multiple_of).
LLAMA_MULTIPLE_OF = 256


def llama_hidden(n_embd: int, multiple_of: int = LLAMA_MULTIPLE_OF) -> int:
    """The SwiGLU width H that Llama gives a model of width C: int(2/3 · 4C), rounded up to a
    multiple of 256 (C = 4096: 10,922 -> 11,008, Llama 2 7B's; C = 128: 341 -> 512)."""
    hidden = int(2 * (4 * n_embd) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class LlamaConfig(ConfigDict):
    """A decoder of Llama's shape (numformer.model.llama); also Mistral's (without a sliding window)
    and Qwen2's (attention_bias). n_kv_head None means n_head (one key/value head per query head),
    n_hidden None Llama's rounding of 2/3 · 4C (llama_hidden); both are filled in when the config
    is made, so to_dict always records numbers."""

    family: ClassVar[str] = "llama"

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None    # key/value heads, shared by n_head / n_kv_head query heads each
    n_embd: int = 128
    n_hidden: int | None = None     # SwiGLU width H (Hugging Face's intermediate_size)
    rope_theta: float = 10_000.0    # RoPE's θ (Llama 3: 500,000; Qwen2: 1,000,000)
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False    # the LM head is the token embedding (no lm_head.weight)
    attention_bias: bool = False    # biases on q_proj, k_proj, v_proj (Qwen2)
    dropout: float = 0.0

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_hidden is None and _is_int(self.n_embd):
            self.n_hidden = llama_hidden(self.n_embd)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "n_hidden"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InvalidConfig(name, f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise InvalidConfig("n_embd", f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2:
            raise InvalidConfig("n_embd", f"the head size n_embd / n_head = {self.n_embd // self.n_head} must be even: "
                                          f"RoPE turns each head's channels in pairs")
        if self.n_head % self.n_kv_head:
            raise InvalidConfig("n_kv_head", f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head}): "
                                             f"each key/value head serves the same number of query heads")
        for name in ("tie_embeddings", "attention_bias"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidConfig(name, f"{name} must be true or false, got {getattr(self, name)!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise InvalidConfig("dropout", f"dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise InvalidConfig(name, f"{name} must be a positive finite number, got {value!r}")

# family name -> its config class ("arch" on the command line)
CONFIGS = {"gpt2": GPTConfig, "llama": LlamaConfig}
ARCHS = tuple(CONFIGS)


def describe(config) -> str:
    """A model's shape in a few words: "4 layers, 4 heads, 128 wide, block 64, sinusoidal positions"
    (a GPT), "llama: 4 layers, 4 heads (2 key/value), 128 wide, SwiGLU 512, block 64, RoPE θ 10000"."""
    m = config
    if m.family == "gpt2":
        return f"{m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, block {m.block_size}, {m.pos_encoding} positions"
    kv = f" ({m.n_kv_head} key/value)" if m.n_kv_head != m.n_head else ""
    extras = "".join([", tied head" if m.tie_embeddings else "", ", q/k/v biases" if m.attention_bias else ""])
    return (f"llama: {m.n_layer} layers, {m.n_head} heads{kv}, {m.n_embd} wide, SwiGLU {m.n_hidden}, "
            f"block {m.block_size}, RoPE θ {m.rope_theta:g}{extras}")


def position_terms(config: GPTConfig, dtype) -> tuple[float, np.ndarray]:
    """(s, P') of x0 = s·wte[idx] + P'[t] with sinusoidal positions (model/gpt.py, "Positions"):
    the factor on the token embedding and the (block_size, C) table P / divisor, in `dtype`, as
    the config's sinusoidal_form gives them."""
    s, divisor = SINUSOIDAL_FORMS[config.sinusoidal_form](config.n_embd)
    return s, (positional.sinusoidal(config.block_size, config.n_embd) / divisor).astype(dtype)


class InvalidConfig(ValueError):
    """A config value that no model can have, or an unknown key; `key` names the field.

    A plain ValueError, not a NumformerError: the caller knows where the value came from and
    reports it there, a flag as a UsageError naming the flag, a file as a CheckpointError naming
    the file. A config built wrongly by numformer's own code stays a traceback."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)      # True is an int to Python


def _is_number(value) -> bool:
    """An int or a float, not a bool, not the text of a number ("0.5")."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
