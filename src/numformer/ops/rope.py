"""Rotary position embedding (RoPE, Su et al. 2021): q and k rotated by their position.

Not one of the article's formulas: Llama, Mistral and Qwen2 use it instead of adding a position
table to the embedding (the article's formula 2). Each head's vector of size hs is cut into
hs/2 pairs, and pair i at position p is turned by the angle p·ω_i in its own plane:

Forward (x is one head's q or k at positions t0 .. t0+T−1)
    ω_i   = θ^(−2i/hs)                     i = 0 .. hs/2 − 1; θ = 10,000 (Llama 3: 500,000, Qwen2: 1,000,000)
    a_pi  = p · ω_i                        the angle of pair i at position p
    pair i is (x_i, x_{i+hs/2})            rotate-half pairing: the first half against the second
    y_i        = x_i cos a_pi − x_{i+hs/2} sin a_pi
    y_{i+hs/2} = x_{i+hs/2} cos a_pi + x_i sin a_pi
    written with whole vectors: y = x ⊙ cos + rotate_half(x) ⊙ sin, rotate_half(x) = [−x₂, x₁],
    cos = [cos a_p, cos a_p] and sin = [sin a_p, sin a_p] (each angle twice, once per half)
    x (..., T, hs)   y (..., T, hs); hs even

Why it encodes position. A rotation keeps lengths (‖y‖ = ‖x‖), and two rotations compose into
the rotation by the difference: with R_p the rotation at position p, (R_m q)·(R_n k) =
q·(R_{n−m} k). The attention score of a query at m and a key at n depends on their contents and
on n − m only. That is also why the KV cache can keep rotated keys: a key's rotation depends on
its own position, never on the query's.

Pairing. The paper pairs neighbours, (x_0, x_1), (x_2, x_3), ... ("interleaved"). Meta's Llama
code does too (on complex numbers); Hugging Face checkpoints, and this op, pair x_i with
x_{i+hs/2}. The two are the same rotation up to a fixed reordering of each head's channels, which
Hugging Face's Llama conversion applies once to the rows of W_q and W_k; a checkpoint therefore
runs correctly only with the pairing it was converted for.

Backward (dy = ∂L/∂y). The rotation is orthogonal, so its transpose, the rotation by −a_pi, carries
the gradient back:
    dx_i        =  dy_i cos a_pi + dy_{i+hs/2} sin a_pi
    dx_{i+hs/2} =  dy_{i+hs/2} cos a_pi − dy_i sin a_pi
    dx = dy ⊙ cos − rotate_half(dy ⊙ sin)
There is nothing to learn: θ is fixed, so x is the only input with a gradient.

The angles are computed in float64 and cos and sin rounded once to x's dtype.
"""

from typing import NamedTuple

import numpy as np

THETA = 10_000.0


class Cache(NamedTuple):
    """What backward needs: the tables forward used (numformer.ops.fast.rope makes the same)."""

    cos: np.ndarray     # (T, hs) cos a_p, each angle twice
    sin: np.ndarray     # (T, hs) sin a_p, each angle twice


def check_shapes(x, theta, start):
    """ValueError unless x is (..., T, hs) with hs even, θ > 0 and the start position an integer >= 0."""
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"rope: x has shape {x.shape}; need (..., T, hs) with an even head size hs")
    if not (np.isfinite(theta) and theta > 0):
        raise ValueError(f"rope: theta must be a positive number, got {theta!r}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"rope: start must be an integer >= 0, got {start!r}")


def tables(T, hs, theta=THETA, start=0, dtype=np.float64):
    """(cos, sin), each (T, hs): cos a_pi and sin a_pi for positions start .. start+T−1, the hs/2
    angles written twice (once for each half of the head)."""
    omega = theta ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)          # (hs/2,) ω_i
    angle = np.arange(start, start + T, dtype=np.float64)[:, None] * omega   # (T, hs/2) a_pi
    angle = np.concatenate([angle, angle], axis=-1)                         # (T, hs)
    return np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)


def rotate_half(x):
    """[x₁, x₂] -> [−x₂, x₁] over the last axis: each pair (x_i, x_{i+hs/2}) turned by 90°."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(x, theta=THETA, start=0):
    """y = x ⊙ cos + rotate_half(x) ⊙ sin, x (..., T, hs) at positions start .. start+T−1.
    Returns (y, cache)."""
    check_shapes(x, theta, start)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    T, hs = x.shape[-2:]
    cos, sin = tables(T, hs, theta, start, x.dtype)
    return x * cos + rotate_half(x) * sin, Cache(cos, sin)


def backward(dy, cache):
    """Returns dx = dy ⊙ cos − rotate_half(dy ⊙ sin): the rotation by −a."""
    if dy.ndim < 2 or dy.shape[-2:] != cache.cos.shape:
        raise ValueError(f"rope: dy has shape {dy.shape} but y had shape (..., {cache.cos.shape[0]}, "
                         f"{cache.cos.shape[1]})")
    return dy * cache.cos - rotate_half(dy * cache.sin)
