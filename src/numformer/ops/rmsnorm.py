"""RMS normalisation (Zhang & Sennrich 2019), with PyTorch's definition (torch.nn.RMSNorm).

Not one of the article's formulas: Llama, Mistral and Qwen2 use it instead of LayerNorm (the
article's formula 6). It keeps LayerNorm's division by a root mean square but drops the mean:
no centring and no bias, so one reduction per row instead of two.

Forward, over the last axis of size C:
    ms    = (1/C) Σ_j x_j²                 the mean square (LayerNorm's σ² without subtracting μ)
    rstd  = 1 / √(ms + eps)                eps inside the square root
    x̂     = x · rstd
    y     = γ ⊙ x̂
    x (..., C)   γ (C,)   y (..., C)

Backward (dy = ∂L/∂y; sums over "rows" run over every leading dimension):
    dγ = Σ_rows dy ⊙ x̂
    dx̂ = dy ⊙ γ
    From ∂x̂_j/∂x_i = rstd · (δ_ij − x̂_i x̂_j / C):
    dx_i = rstd · ( dx̂_i                        term 1: x_i's direct path into x̂_i
                  − x̂_i (1/C) Σ_j dx̂_j x̂_j )    term 2: x_i's path through the mean square
LayerNorm's backward has one more term (the mean's), which RMSNorm has no mean to need.

`weight` (γ) may be None (no gain); its gradient is then None.
"""

from typing import NamedTuple

import numpy as np

EPS = 1e-6


class Cache(NamedTuple):
    """What backward (and output) need; numformer.ops.fast.rmsnorm makes the same."""

    xhat: np.ndarray            # (..., C) the normalised input
    rstd: np.ndarray            # (..., 1) 1 / √(ms + eps)
    weight: np.ndarray | None   # γ (C,)


def check_shapes(x, weight):
    """ValueError unless weight (may be None) has shape (C,), C = x's last axis."""
    if weight is not None and weight.shape != (x.shape[-1],):
        raise ValueError(f"rmsnorm: x has shape {x.shape} but weight has shape {weight.shape} "
                         f"(must be ({x.shape[-1]},))")


def forward(x, weight, eps=EPS):
    """y = weight * x / sqrt(mean(x²) + eps) over the last axis. Returns (y, cache)."""
    check_shapes(x, weight)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    ms = (x * x).mean(axis=-1, keepdims=True)                # (..., 1) the mean square
    rstd = 1.0 / np.sqrt(ms + eps)                           # (..., 1) eps inside the root
    cache = Cache(x * rstd, rstd, weight)                    # x̂ (..., C)
    return output(cache), cache


def output(cache):
    """y = x̂ ⊙ γ from forward's cache: forward's output again, bit for bit (forward computes it
    here too), for a caller that keeps the cache and not y (the next linear map's input)."""
    return cache.xhat * cache.weight if cache.weight is not None else cache.xhat.copy()


def backward(dy, cache):
    """Returns (dx, dweight); dweight is None where forward got None."""
    xhat, rstd, weight = cache.xhat, cache.rstd, cache.weight
    if dy.shape != xhat.shape:
        raise ValueError(f"rmsnorm: dy has shape {dy.shape} but y had shape {xhat.shape}")
    rows = tuple(range(dy.ndim - 1))
    dweight = (dy * xhat).sum(axis=rows) if weight is not None else None
    dxhat = dy * weight if weight is not None else dy
    mean_dxhat_xhat = (dxhat * xhat).mean(axis=-1, keepdims=True)       # (..., 1)
    dx = rstd * (dxhat                                                    # term 1
                 - xhat * mean_dxhat_xhat)                                # term 2
    return dx, dweight
