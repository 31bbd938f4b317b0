"""A linear map with a low-rank adapter (LoRA, Hu et al. 2021): y = x Wᵀ + b + (α/r)·(x Aᵀ) Bᵀ.

Fine-tuning changes W by ΔW = (α/r)·B A, a matrix of rank at most r: only A and B are trained,
W and b stay as they are. B starts at zero, so the adapted layer starts as the plain linear map.

Forward (s = α/r)
    u = x @ Aᵀ                      the input projected down to r numbers per row
    y = x @ Wᵀ + b + s · (u @ Bᵀ)
    x (..., C_in)   W (C_out, C_in)   b (C_out,) or None   A (r, C_in)   B (C_out, r)
    u (..., r)      y (..., C_out)

Backward (dy = ∂L/∂y; N is the product of x's leading dimensions, folded into one axis)
    y[n, o] = Σ_i x[n, i] W[o, i] + b[o] + s Σ_k u[n, k] B[o, k],  u[n, k] = Σ_i x[n, i] A[k, i]
    term 1, through u:  du[n, k] = s Σ_o dy[n, o] B[o, k]            ->  du = s · dy @ B
    dx = dy @ W + du @ A            x reaches y directly (through W) and through u (term 1)
    dW = dyᵀ @ x                    as in linear (None when forward was told frozen=True)
    db = Σ_n dy[n, :]               as in linear (None without a bias, or when frozen)
    dA = duᵀ @ x                    dA[k, i] = Σ_n du[n, k] x[n, i]
    dB = s · dyᵀ @ u                dB[o, k] = s Σ_n dy[n, o] u[n, k]

With frozen=True, backward skips dW and db (the C_out × C_in product that dominates its cost):
fine-tuning with adapters never uses them. Memory: like linear, the cache keeps x unless
keep_input=False, and then backward must be given x; it also keeps u, which is only r wide.
"""

from typing import NamedTuple

import numpy as np


class Cache(NamedTuple):
    """What backward needs."""

    x: np.ndarray | None        # the input as (N, C_in); None with keep_input=False
    u: np.ndarray               # (N, r) x Aᵀ
    weight: np.ndarray          # (C_out, C_in)
    lora_a: np.ndarray          # (r, C_in)
    lora_b: np.ndarray          # (C_out, r)
    scale: float                # s = α / r
    has_bias: bool
    frozen: bool                # no dweight, dbias
    x_shape: tuple              # the input's shape, (..., C_in)


def forward(x, weight, bias, lora_a, lora_b, alpha=1.0, frozen=False, keep_input=True):
    """y = x @ weight.T + bias + (alpha/r) · (x @ lora_a.T) @ lora_b.T, r = lora_a.shape[0].
    Returns (y, cache)."""
    c_out, c_in = weight.shape
    r = lora_a.shape[0]
    if x.shape[-1] != c_in or lora_a.shape != (r, c_in) or lora_b.shape != (c_out, r) or r < 1:
        raise ValueError(f"lora: x {x.shape}, weight {weight.shape}, lora_a {lora_a.shape}, lora_b {lora_b.shape} "
                         f"do not fit (need x (..., C_in), weight (C_out, C_in), lora_a (r, C_in), lora_b (C_out, r))")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"lora: bias has shape {bias.shape}, weight {weight.shape}")
    s = alpha / r
    x2 = x.reshape(-1, c_in)                    # (N, C_in)
    u = x2 @ lora_a.T                           # (N, r)
    y = x2 @ weight.T                           # (N, C_out)
    if bias is not None:
        y += bias
    y += (s * u) @ lora_b.T                     # the adapter's share, (N, C_out)
    y = y.reshape(*x.shape[:-1], c_out)         # (..., C_out)
    return y, Cache(x2 if keep_input else None, u, weight, lora_a, lora_b, s, bias is not None, frozen, x.shape)


def backward(dy, cache, x=None):
    """Returns (dx, dweight, dbias, dlora_a, dlora_b); dweight and dbias are None when forward
    was called with frozen=True (dbias also without a bias). x is forward's input, needed only
    when forward was called with keep_input=False."""
    x2, u, weight, lora_a, lora_b, s = cache.x, cache.u, cache.weight, cache.lora_a, cache.lora_b, cache.scale
    x_shape = cache.x_shape
    c_out, c_in = weight.shape
    if dy.shape != (*x_shape[:-1], c_out):
        raise ValueError(f"lora: dy has shape {dy.shape} but y had shape {(*x_shape[:-1], c_out)}")
    if x2 is None:
        if x is None or x.shape != x_shape:
            raise ValueError(f"lora: forward kept no input (keep_input=False), so backward needs x of shape {x_shape}")
        x2 = x.reshape(-1, c_in)                # (N, C_in)
    dy2 = dy.reshape(-1, c_out)                 # (N, C_out)
    du = s * (dy2 @ lora_b)                     # term 1: (N, r)
    dx = dy2 @ weight                           # (N, C_in), through W
    dx += du @ lora_a                           # (N, C_in), through u
    dlora_a = du.T @ x2                         # (r, C_in)
    dlora_b = s * (dy2.T @ u)                   # (C_out, r)
    dweight = None if cache.frozen else dy2.T @ x2    # (C_out, C_in)
    dbias = dy2.sum(axis=0) if cache.has_bias and not cache.frozen else None
    return dx.reshape(x_shape), dweight, dbias, dlora_a, dlora_b
