"""SwiGLU (Shazeer 2020): the gated MLP of Llama, Mistral and Qwen2, the step between its maps.

Not one of the article's formulas: it replaces the GPT's MLP, W_2 · GELU(W_1 x) (the article's
formula 7), with three linear maps and a gate:

    MLP(x) = W_down · ( SiLU(x W_gateᵀ) ⊙ (x W_upᵀ) )        x (..., C), W_gate, W_up (H, C), W_down (C, H)

The three maps are ops.linear (or ops.lora with an adapter), which the model calls itself: they
carry the layers' names (gate_proj, up_proj, down_proj) and adapters. This op is what lies between
them, with g = x W_gateᵀ and u = x W_upᵀ:

Forward
    σ(g)    = 1 / (1 + e^(−g))              the logistic sigmoid
    SiLU(g) = g σ(g)                        "swish": a smooth ReLU, slightly negative below 0
    h       = SiLU(g) ⊙ u
    g (..., H)   u (..., H)   h (..., H)

Backward (dh = ∂L/∂h), by the product rule on h = SiLU(g) · u:
    du = dh ⊙ SiLU(g)                       u's factor
    dg = dh ⊙ u ⊙ SiLU'(g)                  g's path through the gate, with SiLU's derivative
         SiLU'(g) = σ(g) + g σ'(g) = σ(g) + g σ(g)(1 − σ(g)) = σ(g) (1 + g (1 − σ(g)))
         (σ' = σ (1 − σ): the sigmoid's own derivative)

Numerical care: σ is evaluated through e^(−|g|), which never overflows; for g ≤ −40 it is
e^g, so SiLU(−50) is a tiny negative number, not 0·∞.
"""

from typing import NamedTuple

import numpy as np


class Cache(NamedTuple):
    """What backward needs: the two inputs (the gate is cheaper to evaluate again than to keep;
    numformer.ops.fast.swiglu makes the same)."""

    gate: np.ndarray        # g (..., H)
    up: np.ndarray          # u (..., H)


def check_shapes(gate, up):
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate has shape {gate.shape} but up has shape {up.shape} (must be equal)")


def sigmoid(g):
    """σ(g) = 1 / (1 + e^(−g)), through e^(−|g|) ∈ (0, 1]: no overflow at either end."""
    z = np.exp(-np.abs(g))                                   # numerical care: never e^(+large)
    return np.where(g >= 0, 1.0 / (1.0 + z), z / (1.0 + z)).astype(g.dtype, copy=False)


def silu_and_slope(g):
    """(SiLU(g), SiLU'(g)) = (g σ(g), σ(g) (1 + g (1 − σ(g))))."""
    s = sigmoid(g)
    return g * s, s * (1.0 + g * (1.0 - s))


def forward(gate, up):
    """h = SiLU(gate) ⊙ up. Returns (h, cache)."""
    check_shapes(gate, up)
    if gate.dtype.kind != "f":
        gate, up = gate.astype(np.float64), up.astype(np.float64)
    cache = Cache(gate, up)
    return output(cache), cache


def output(cache):
    """h = SiLU(g) ⊙ u from forward's cache: forward's output again, bit for bit, for a caller
    that keeps the cache and not h (W_down's input, needed again by W_down's backward)."""
    return cache.gate * sigmoid(cache.gate) * cache.up


def backward(dh, cache):
    """Returns (dgate, dup)."""
    g, u = cache.gate, cache.up
    if dh.shape != g.shape:
        raise ValueError(f"swiglu: dh has shape {dh.shape} but h had shape {g.shape}")
    silu, slope = silu_and_slope(g)
    return dh * u * slope, dh * silu
