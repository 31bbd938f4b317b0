"""Softmax (the article's formula 8).

Forward, along `axis` (size n):
    y_i = exp(x_i) / Σ_j exp(x_j)
        = exp(x_i − m) / Σ_j exp(x_j − m)   for any m; we take m = max_j x_j so that
                                             every exponent is ≤ 0 and exp cannot overflow
    x (..., n, ...)   y same shape as x

Backward (dy = ∂L/∂y):
    ∂y_j/∂x_i = y_j (δ_ij − y_i)
    dx_i = Σ_j dy_j y_j (δ_ij − y_i)
         = y_i dy_i                  term 1: x_i's own output
         − y_i Σ_j dy_j y_j          term 2: x_i's share of the normaliser
         = y_i (dy_i − Σ_j dy_j y_j)

A slice that is −inf everywhere has no probability distribution; like PyTorch, it gives NaN
here. (attention.py handles fully masked rows itself and defines them as zeros.)
"""

import numpy as np


def forward(x, axis=-1):
    """y = exp(x) / sum(exp(x)) along `axis`. Returns (y, cache)."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))   # numerical care: max-subtraction, exponents <= 0
    y = e / e.sum(axis=axis, keepdims=True)
    return y, (y, axis)


def backward(dy, cache):
    """Returns dx."""
    y, axis = cache
    if dy.shape != y.shape:
        raise ValueError(f"softmax: dy has shape {dy.shape} but y had shape {y.shape}")
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))
