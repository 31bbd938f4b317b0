"""GELU activation (the article's formula 7): y = x Φ(x), Φ the standard normal CDF.

Forward, two forms of the gate s(x):
    form="tanh" (default, GPT-2's):  s = ½ (1 + tanh u),   u = √(2/π) (x + 0.044715 x³)
    form="exact" (BERT's):            s = Φ(x) = ½ erfc(−x/√2)
    y = x s(x)
    x any shape; y same shape.

Backward (dy = ∂L/∂y), by the product rule on y = x · s(x):
    dx = dy ⊙ ( s                     term 1: x's direct factor
              + x · ds/dx )            term 2: x's path through the gate s
    tanh form:  ds/dx = ½ (1 − tanh² u) · √(2/π) (1 + 3 · 0.044715 x²)
    exact form: ds/dx = φ(x) = exp(−x²/2) / √(2π)

numformer.ops.fast.gelu computes the same in cache-sized slices, with a float64 gate that stays
accurate where ½ (1 + tanh u) cancels to 0.
"""

import math
from typing import NamedTuple

import numpy as np

from numformer.ops.erf import erfc

FORMS = ("tanh", "exact")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class Cache(NamedTuple):
    """What backward needs: x itself, since the gate is cheaper to evaluate again than to keep
    (numformer.ops.fast.gelu makes the same, with its slice size)."""

    x: np.ndarray
    form: str                   # "tanh" or "exact"
    chunk: int | None = None    # the fast op's elements per slice


def gate(x, form="tanh"):
    """(s, ds/dx): the gate and its derivative."""
    x = np.clip(x, -40.0, 40.0)          # numerical care: s is exactly 0 or 1 beyond ±40; no overflow in x³
    if form == "tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))
        return 0.5 * (1.0 + t), 0.5 * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    s = 0.5 * erfc(-x / math.sqrt(2.0))  # numerical care: erfc keeps Φ(−20) ≈ 2.8e−89 a real number
    return s, np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def forward(x, form="tanh"):
    """y = x Φ(x) (form="exact") or its tanh approximation (default). Returns (y, cache); the
    cache is x, and backward evaluates the gate again."""
    if form not in FORMS:
        raise ValueError(f"gelu: form must be 'tanh' or 'exact', got {form!r}")
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    s, _ = gate(x, form)
    return (x * s).astype(x.dtype, copy=False), Cache(x, form)


def output_and_slope(cache):
    """(y, dy/dx) from forward's cache: the output again and the local derivative s + x · ds/dx."""
    x = cache.x
    s, ds = gate(x, cache.form)
    return (x * s).astype(x.dtype, copy=False), (s + x * ds).astype(x.dtype, copy=False)


def backward(dy, cache):
    """Returns dx = dy ⊙ (s + x · ds/dx)."""
    x = cache.x
    if dy.shape != x.shape:
        raise ValueError(f"gelu: dy has shape {dy.shape} but x had shape {x.shape}")
    return dy * output_and_slope(cache)[1]
