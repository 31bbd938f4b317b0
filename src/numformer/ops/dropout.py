"""Inverted dropout (the article's formula 10).

The article writes y = m ⊙ x with m_i ∈ {0, 1}, each 0 with probability p. Then
E[y_i] = (1 − p) x_i: during training every activation is shrunk by (1 − p) on average, but at
evaluation time nothing is dropped, so the next layer would see inputs (1/(1 − p)) times larger
than the ones it was trained on. Inverted dropout puts the correction into training instead:

Forward
    m_i ~ Bernoulli(1 − p)            (1 = keep)
    y   = m ⊙ x / (1 − p)             E[y_i] = x_i, so evaluation is just y = x
    x any shape; y same shape; p = 1 drops everything (y = 0, no division by zero).

Backward (dy = ∂L/∂y); y is linear in x with the same mask:
    dx = dy ⊙ m / (1 − p)

p = 0 or training=False is the identity: y is x itself (no copy) and dx is dy.
"""

import numpy as np


def keep_mask(shape, p, rng):
    """Boolean mask of `shape`, True (keep) with probability 1 − p, drawn from rng.

    Drawn as float32 uniforms whatever the compute dtype, so float32 and float64 runs with the
    same seed drop the same elements. Shared with attention's dropout on probabilities.
    """
    if rng is None:
        raise ValueError("dropout: p > 0 in training needs rng (a numpy.random.Generator)")
    return rng.random(shape, dtype=np.float32) >= p


def check_p(p, who="dropout"):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{who}: p must be in [0, 1], got {p}")


def forward(x, p, rng, training=True):
    """y = m * x / (1 - p) with m ~ Bernoulli(1 - p). Returns (y, cache)."""
    check_p(p)
    if not training or p == 0.0:
        return x, None                                  # identity: no mask, no copy
    keep = keep_mask(x.shape, p, rng)
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0         # numerical care: p = 1 keeps nothing
    m = keep.astype(x.dtype)                            # in x's dtype: never promote float32
    m *= scale                                          # m / (1 − p)
    return x * m, m


def backward(dy, cache):
    """Returns dx."""
    m = cache
    if m is None:
        return dy
    if dy.shape != m.shape:
        raise ValueError(f"dropout: dy has shape {dy.shape} but x had shape {m.shape}")
    return dy * m
