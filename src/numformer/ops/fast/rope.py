"""Rotary position embedding, the fast version: the same formula, signature and cache contract as
numformer.ops.rope (read that module for the math and the derivation of backward).

What it adds: the cos and sin tables are made once per head size, θ and dtype, for positions
0 .. N−1, and each call takes a slice of them (a KV-cached decoding step asks for one position
at a time), growing the tables when a position beyond them is asked for; and rotate_half's
concatenated copy is left out: the second term is subtracted from and added to the two halves in
place. Each element is the reference's, bit for bit: (−a)·b = −(a·b) and p + (−q) = p − q
exactly in floating point, and the tables hold the same products p·ω_i. Where
numformer.ops.fast.dispatch chooses numba for float32, forward's rotation is one compiled pass
(numformer.ops.fast.kernels rope_rotate) of the same two operations per element, in the same
order: the same bits (a decoding step rotates one position of a few heads, where six array
operations cost more in calls than in arithmetic).
"""

import threading

import numpy as np

from numformer.ops import rope as reference
from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA
from numformer.ops.rope import THETA, Cache

_TABLES = {}            # (hs, θ, dtype) -> (cos, sin) for positions 0 .. N−1, read-only
_LOCK = threading.Lock()


def tables(T, hs, theta=THETA, start=0, dtype=np.float64):
    """(cos, sin) for positions start .. start+T−1, (T, hs) read-only views of the kept tables."""
    key = (hs, float(theta), np.dtype(dtype))
    kept = _TABLES.get(key)
    if kept is None or kept[0].shape[0] < start + T:
        with _LOCK:
            kept = _TABLES.get(key)
            if kept is None or kept[0].shape[0] < start + T:
                n = max(start + T, 2 * kept[0].shape[0] if kept is not None else 0, 256)
                kept = reference.tables(n, hs, theta, 0, dtype)
                for a in kept:
                    a.setflags(write=False)
                if len(_TABLES) > 64:
                    _TABLES.clear()
                _TABLES[key] = kept
    return kept[0][start:start + T], kept[1][start:start + T]


def forward(x, theta=THETA, start=0):
    """y = x ⊙ cos + rotate_half(x) ⊙ sin, x (..., T, hs) at positions start .. start+T−1.
    Returns (y, cache)."""
    reference.check_shapes(x, theta, start)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    T, hs = x.shape[-2:]
    h = hs // 2
    cos, sin = tables(T, hs, theta, start, x.dtype)
    if x.size and dispatch.runs("rope", x) == NUMBA:              # the same operations, one compiled pass
        y = np.empty(x.shape, x.dtype)
        dispatch.kernels().rope_rotate(x.reshape(-1, T, hs), cos, sin, y.reshape(-1, T, hs))
        return y, Cache(cos, sin)
    y = x * cos
    y[..., :h] -= x[..., h:] * sin[:, :h]               # y_i        = x_i cos − x_{i+hs/2} sin
    y[..., h:] += x[..., :h] * sin[:, h:]               # y_{i+hs/2} = x_{i+hs/2} cos + x_i sin
    return y, Cache(cos, sin)


def backward(dy, cache):
    """Returns dx = dy ⊙ cos − rotate_half(dy ⊙ sin): the rotation by −a."""
    cos, sin = cache.cos, cache.sin
    if dy.ndim < 2 or dy.shape[-2:] != cos.shape:
        raise ValueError(f"rope: dy has shape {dy.shape} but y had shape (..., {cos.shape[0]}, {cos.shape[1]})")
    h = cos.shape[1] // 2
    dx = dy * cos
    dx[..., :h] += dy[..., h:] * sin[:, h:]             # dx_i        = dy_i cos + dy_{i+hs/2} sin
    dx[..., h:] -= dy[..., :h] * sin[:, :h]             # dx_{i+hs/2} = dy_{i+hs/2} cos − dy_i sin
    return dx
