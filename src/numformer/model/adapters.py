"""Low-rank adapters (LoRA) on a decoder (the GPT or the Llama): which layers, what rank, and
merging them into the weights.

A layer with an adapter computes y = x Wᵀ + b + (α/r)·(x Aᵀ) Bᵀ (numformer.ops.lora). While
fine-tuning only A and B train: the model keeps them in a flat buffer of their own
(`model.adapters`), and its gradient buffer and the optimizer's moments have that buffer's
layout, so the base weights get neither (see GPT, "Adapters"). A checkpoint stores A and B in
model.safetensors beside the weights and this config under "lora" in config.json.

Targets are named as each family's table names them for --lora_targets (params.Family.lora_targets):
the GPT's layer names (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj), the Llama's as Hugging Face
and PEFT name them (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj).

Merging gives the plain layer with the same function: W' = W + (α/r)·B A (B A is C_out × C_in),
which is what `numformer convert --to-hf` exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numformer.errors import UsageError
from numformer.model.params import ALL_LORA_TARGETS, DEFAULT_LORA_TARGETS, LORA_A, LORA_B, WEIGHT, family_of


@dataclass(frozen=True)
class LoRAConfig:
    rank: int
    alpha: float
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)) or self.rank < 1:
            raise UsageError(f"lora_rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not np.isfinite(self.alpha) \
                or self.alpha <= 0:
            raise UsageError(f"lora_alpha must be a positive number, got {self.alpha!r}")
        targets = tuple(self.targets)
        if not targets:
            raise UsageError(f"lora_targets is empty; choose from {', '.join(ALL_LORA_TARGETS)}")
        for t in targets:
            if t not in ALL_LORA_TARGETS:
                raise UsageError(f"lora_targets: unknown layer {t!r}; choose from {', '.join(ALL_LORA_TARGETS)}")
        if len(set(targets)) != len(targets):
            raise UsageError(f"lora_targets names a layer twice: {','.join(targets)}")
        object.__setattr__(self, "targets", tuple(t for t in ALL_LORA_TARGETS if t in targets))

    @property
    def scale(self) -> float:
        """α/r, the factor on the adapter's output."""
        return self.alpha / self.rank

    def check_fits(self, config) -> None:
        """UsageError unless every target is a layer of the config's family and the rank is at
        most min(C_in, C_out) of every adapted layer (a larger rank adds parameters but no
        expressive power: B A cannot exceed that rank)."""
        family = family_of(config)
        for layer in self.targets:
            if layer not in family.lora_targets:
                raise UsageError(f"lora_targets: {layer!r} is not a layer of a {config.family} model; choose from "
                                 f"{', '.join(family.lora_targets)}")
            n_out, n_in = family.layer(family.lora_targets[layer]).shape(config)
            if self.rank > min(n_in, n_out):
                raise UsageError(f"lora_rank {self.rank} is larger than the layer: {layer} maps {n_in} -> {n_out}, "
                                 f"so the rank can be at most {min(n_in, n_out)}")

    def to_dict(self) -> dict:
        return {"rank": int(self.rank), "alpha": float(self.alpha), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d) -> "LoRAConfig":
        if not isinstance(d, dict) or set(d) != {"rank", "alpha", "targets"} or not isinstance(d["targets"], list):
            raise UsageError("a lora config needs exactly the keys rank, alpha, targets (a list)")
        return cls(rank=d["rank"], alpha=d["alpha"], targets=tuple(d["targets"]))


def parse_targets(text: str) -> tuple[str, ...]:
    """'attn.c_attn,mlp.c_fc' -> ('attn.c_attn', 'mlp.c_fc'); checked by LoRAConfig."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def merged_state_dict(model) -> dict[str, np.ndarray]:
    """The model's base weights with every adapter merged in: W + (α/r)·B A (see `merged`)."""
    return merged(model.state_dict(), model.config, model.lora)


def merged(tensors: dict[str, np.ndarray], config, lora: LoRAConfig | None) -> dict[str, np.ndarray]:
    """Copies of the base weights of a model's named `tensors` (its parameters, and its adapters
    when lora is not None), each adapted weight with its adapter merged in: W + (α/r)·B A.
    Computed in float64 and rounded once, so the merged weight is the closest float to the exact sum."""
    family = family_of(config)
    out = {p.name: tensors[p.name].copy() for p in family.params(config)}
    if lora is None:
        return out
    s = lora.scale
    for p in family.adapters(config, lora.rank, lora.targets):
        if p.part == LORA_A:
            A = tensors[p.name].astype(np.float64)                                     # (r, C_in)
            B = tensors[family.name(p.layer, LORA_B, p.block)].astype(np.float64)     # (C_out, r)
            weight = family.name(p.layer, WEIGHT, p.block)
            W = tensors[weight]
            out[weight] = (W.astype(np.float64) + s * (B @ A)).astype(W.dtype)
    return out


def adapter_params(config, lora: dict | None) -> int:
    """Parameters of the adapters that a checkpoint's "lora" section describes, in closed form
    (r·(C_in + C_out) per adapted layer per block); 0 when it describes none or is not a valid
    section (loading reports that in its own words)."""
    try:
        lc = LoRAConfig.from_dict(lora) if lora is not None else None
    except UsageError:
        return 0
    family = family_of(config)
    if lc is None or any(t not in family.lora_targets for t in lc.targets):
        return 0
    return config.n_layer * lc.rank * sum(sum(family.layer(family.lora_targets[t]).shape(config))
                                          for t in lc.targets)
