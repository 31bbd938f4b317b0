"""GPTConfig: the hyperparameters that fix a GPT's shape.

The defaults are nanoGPT's CPU "baby GPT" on a character-level corpus.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from numformer.errors import UsageError

POS_ENCODINGS = ("sinusoidal", "learned")
# How token embedding and sinusoidal table P are added (see model/gpt.py, "Positions"):
# name -> (factor on wte[idx], divisor of P) as a function of the width C
SINUSOIDAL_FORMS = {
    "scaled": lambda C: (1.0, math.sqrt(C)),          # wte[idx] + P/√C, numformer's default
    "paper": lambda C: (math.sqrt(C), 1.0),           # √C·wte[idx] + P, Vaswani et al. §3.4
    "article": lambda C: (1.0, 1.0),                  # wte[idx] + P, the article read literally
}
GELUS = ("tanh", "exact")


@dataclass
class GPTConfig:
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
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise UsageError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not isinstance(self.bias, bool):     # the text "false" would read as true
            raise UsageError(f"bias must be true or false, got {self.bias!r}")
        if not (0.0 <= float(self.dropout) < 1.0):
            raise UsageError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise UsageError(f"pos_encoding must be one of {', '.join(POS_ENCODINGS)}, got {self.pos_encoding!r}")
        if self.sinusoidal_form not in SINUSOIDAL_FORMS:
            raise UsageError(f"sinusoidal_form must be one of {', '.join(SINUSOIDAL_FORMS)}, "
                             f"got {self.sinusoidal_form!r}")
        if self.gelu not in GELUS:
            raise UsageError(f"gelu must be one of {', '.join(GELUS)}, got {self.gelu!r}")
        if not 0 < float(self.layer_norm_eps) < math.inf:
            raise UsageError(f"layer_norm_eps must be positive and finite, got {self.layer_norm_eps!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown GPTConfig key(s): {', '.join(unknown)}")
        return cls(**d)
