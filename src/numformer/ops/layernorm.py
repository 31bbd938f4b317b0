"""Layer normalisation (the article's formula 6), with PyTorch's definition.

Forward, over the last axis of size C:
    μ     = (1/C) Σ_j x_j
    σ²    = (1/C) Σ_j (x_j − μ)²             biased variance (divide by C, not C − 1)
    rstd  = 1 / √(σ² + eps)                  eps inside the square root
    x̂     = (x − μ) · rstd
    y     = γ ⊙ x̂ + β
    x (..., C)   γ (C,)   β (C,)   y (..., C)

Backward (dy = ∂L/∂y; sums over "rows" run over every leading dimension):
    dβ = Σ_rows dy
    dγ = Σ_rows dy ⊙ x̂
    dx̂ = dy ⊙ γ
    From ∂x̂_j/∂x_i = rstd · (δ_ij − 1/C − x̂_i x̂_j / C):
    dx_i = rstd · ( dx̂_i                        term 1: x_i's direct path into x̂_i
                  − (1/C) Σ_j dx̂_j              term 2: x_i's path through the mean μ
                  − x̂_i (1/C) Σ_j dx̂_j x̂_j )    term 3: x_i's path through the variance σ²

`weight` (γ) and `bias` (β) may be None (no affine part); their gradients are then None.
"""

from typing import NamedTuple

import numpy as np


class Cache(NamedTuple):
    """What backward (and output) need; numformer.ops.fast.layernorm makes the same."""

    xhat: np.ndarray            # (..., C) the normalised input
    rstd: np.ndarray            # (..., 1) 1 / √(σ² + eps)
    weight: np.ndarray | None   # γ (C,)
    bias: np.ndarray | None     # β (C,)


def check_shapes(x, weight, bias):
    """ValueError unless weight and bias (each may be None) have shape (C,), C = x's last axis."""
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(f"layernorm: x has shape {x.shape} but {name} has shape {p.shape} "
                             f"(must be ({C},))")


def forward(x, weight, bias, eps=1e-5):
    """y = weight * (x - mean) / sqrt(var + eps) + bias over the last axis. Returns (y, cache)."""
    check_shapes(x, weight, bias)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    mu = x.mean(axis=-1, keepdims=True)                      # (..., 1)
    xc = x - mu                                              # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)             # (..., 1) biased: divided by C
    rstd = 1.0 / np.sqrt(var + eps)                          # (..., 1) eps inside the root
    xhat = xc * rstd                                         # (..., C)
    cache = Cache(xhat, rstd, weight, bias)
    return output(cache), cache


def output(cache):
    """y = x̂ ⊙ γ + β from forward's cache: forward's output again, bit for bit (forward computes
    it here too). A caller that would otherwise keep both y and the cache (the GPT, whose next
    linear map needs y in its backward) keeps the cache only and calls this at backward time."""
    xhat, weight, bias = cache.xhat, cache.weight, cache.bias
    y = xhat * weight if weight is not None else xhat.copy()
    if bias is not None:
        y += bias
    return y


def backward(dy, cache):
    """Returns (dx, dweight, dbias); a gradient is None where forward got None."""
    xhat, rstd, weight, bias = cache.xhat, cache.rstd, cache.weight, cache.bias
    if dy.shape != xhat.shape:
        raise ValueError(f"layernorm: dy has shape {dy.shape} but y had shape {xhat.shape}")
    rows = tuple(range(dy.ndim - 1))
    dbias = dy.sum(axis=rows) if bias is not None else None
    dweight = (dy * xhat).sum(axis=rows) if weight is not None else None
    dxhat = dy * weight if weight is not None else dy
    mean_dxhat = dxhat.mean(axis=-1, keepdims=True)                    # (..., 1)
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1, keepdims=True)      # (..., 1)
    dx = rstd * (dxhat                                                    # term 1
                 - mean_dxhat                                             # term 2
                 - xhat * mean_dxhat_xhat)                                # term 3
    return dx, dweight, dbias
