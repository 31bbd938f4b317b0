"""Linear map (the article's formula 1): y = x Wᵀ + b.

Forward
    y = x @ Wᵀ + b
    x (..., C_in)   W (C_out, C_in), PyTorch's layout   b (C_out,) or None   y (..., C_out)

Backward (L is any scalar loss, dy = ∂L/∂y; N is the product of x's leading dimensions)
    y[n, o] = Σ_i x[n, i] W[o, i] + b[o]
    dx[n, i] = Σ_o dy[n, o] W[o, i]          ->  dx = dy @ W
    dW[o, i] = Σ_n dy[n, o] x[n, i]          ->  dW = dyᵀ @ x      (summed over all leading dims)
    db[o]    = Σ_n dy[n, o]                  ->  db = dy.sum over leading dims

Any number of leading dimensions is folded into one axis of N rows, so each of the three
products above is a single 2-D matrix multiply (one BLAS call).

Memory: the cache holds x, needed for dW. A caller that can recompute x cheaply at backward time
passes keep_input=False to forward and gives x back to backward (the GPT does this for the MLP's
second layer, whose input GELU(h) it recomputes; see model/gpt.py).

Frozen weights (fine-tuning with adapters, see ops/lora.py): forward(..., frozen=True) keeps no x,
and backward returns (dx, None, None), skipping the dW product.

Quantized weights (inference, see ops/quant.py): W may be an int8 or bf16 weight; then
y = x deq(W)ᵀ + b, and the weight is frozen (backward gives dx = dy deq(W) only). Here W is
dequantized for each product, as the formula reads; numformer.ops.fast.linear reads the
quantized weight directly.
"""

from typing import NamedTuple

import numpy as np

from numformer.ops import quant

class Cache(NamedTuple):
    """What backward needs (numformer.ops.fast.linear makes the same)."""

    x: np.ndarray | None        # the input as (N, C_in); None with keep_input=False or frozen=True
    weight: np.ndarray          # (C_out, C_in), or a quantized weight of that shape
    has_bias: bool
    x_shape: tuple              # the input's shape, (..., C_in)
    frozen: bool                # no dweight, dbias


def forward(x, weight, bias=None, keep_input=True, frozen=False):
    """y = x @ weight.T + bias. Returns (y, cache); with keep_input=False the cache leaves out x,
    and backward must be given it; with frozen=True (and always for a quantized weight) backward
    gives no dweight, dbias."""
    check_shapes(x, weight, bias)
    c_out, c_in = weight.shape
    frozen = frozen or quant.is_quantized(weight)
    x2 = x.reshape(-1, c_in)                    # (N, C_in)
    y = x2 @ dense(weight).T                    # (N, C_out)
    if bias is not None:
        y += bias
    y = y.reshape(*x.shape[:-1], c_out)         # (..., C_out)
    return y, Cache(x2 if keep_input and not frozen else None, weight, bias is not None, x.shape, frozen)


def backward(dy, cache, x=None):
    """Returns (dx, dweight, dbias); dbias is None when forward had no bias, both are None when
    forward was called with frozen=True. x is forward's input, needed only when forward was
    called with keep_input=False (and frozen=False)."""
    dy2, x2 = backward_operands(dy, cache, x)   # (N, C_out), (N, C_in)
    dx = (dy2 @ dense(cache.weight)).reshape(cache.x_shape)   # (..., C_in)
    if cache.frozen:
        return dx, None, None
    dweight = dy2.T @ x2                        # (C_out, C_in)
    dbias = dy2.sum(axis=0) if cache.has_bias else None
    return dx, dweight, dbias


def dense(weight):
    """The weight as a float array: a quantized one dequantized (ops/quant.py), else itself."""
    return quant.dequantize(weight) if quant.is_quantized(weight) else weight


def check_shapes(x, weight, bias):
    """Raise ValueError unless x (..., C_in), weight (C_out, C_in) and bias (C_out,) or None fit."""
    if weight.ndim != 2:
        raise ValueError(f"linear: x has shape {x.shape} but weight has shape {weight.shape} "
                         f"(weight must be (C_out, C_in))")
    c_out, c_in = weight.shape
    if x.ndim < 1 or x.shape[-1] != c_in:
        raise ValueError(f"linear: x has shape {x.shape} but weight has shape {weight.shape} "
                         f"(x's last dimension must be {c_in})")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"linear: bias has shape {bias.shape} but weight has shape {weight.shape} "
                         f"(bias must be ({c_out},))")


def backward_operands(dy, cache, x=None):
    """(dy, x) of backward as 2-D (N, C_out) and (N, C_in) arrays, x from the cache or the x given
    (x is None for frozen weights); raises ValueError when a shape does not fit the cache."""
    x2, x_shape = cache.x, cache.x_shape
    c_out = cache.weight.shape[0]
    if dy.shape != (*x_shape[:-1], c_out):
        raise ValueError(f"linear: dy has shape {dy.shape} but y had shape {(*x_shape[:-1], c_out)}")
    if x2 is None and not cache.frozen:
        if x is None or x.shape != x_shape:
            raise ValueError(f"linear: forward kept no input (keep_input=False), so backward needs "
                             f"x of shape {x_shape}, got {None if x is None else x.shape}")
        x2 = x.reshape(-1, x_shape[-1])
    return dy.reshape(-1, c_out), x2
