"""Scaled dot-product attention (the article's formula 3): y = softmax(q kᵀ / √d_k + mask) v.

Forward
    S   = q kᵀ / √d_k                            (..., Tq, Tk)  scores
    S_ij = −inf where query i may not see key j   (causal and/or `mask`)
    P   = softmax over j of S                     (..., Tq, Tk)  attention probabilities
    P̃   = P ⊙ M / (1 − p)                         inverted dropout on P (M ~ Bernoulli(1 − p));
                                                  P̃ = P when dropout_p = 0
    y   = P̃ v                                     (..., Tq, d_v)
    q (..., Tq, d_k)   k (..., Tk, d_k)   v (..., Tk, d_v); leading dims equal, e.g. (B, nh)
    (or k's and v's broadcast along q's: shared heads, below).
    Tq ≠ Tk is cross-attention (or decoding with a KV cache).

Which keys a query may see
    mask: boolean, broadcastable to (..., Tq, Tk), True = may attend (e.g. a key padding mask of
    shape (B, 1, 1, Tk)). causal=True is bottom-right aligned: query i (0-based among the Tq)
    sits at absolute position Tk − Tq + i and may see keys 0 .. Tk − Tq + i. With Tq = Tk that is
    the usual lower triangle; with Tq < Tk the queries are the last Tq positions of the sequence,
    which is what a KV cache needs. Both together: a key must be allowed by both.

A query row with no allowed key (all −inf) outputs zeros and passes zero gradient to q, k and v.
(Softmax of an all −inf row is 0/0; we define its probabilities as 0, not NaN and not uniform.)

Backward (dy = ∂L/∂y)
    dv = P̃ᵀ dy                                    y = P̃ v, through v
    dP̃ = dy vᵀ                                    y = P̃ v, through P̃
    dP = dP̃ ⊙ M / (1 − p)                          dropout: the same mask as forward
    dS_ij = P_ij dP_ij                            term 1: S_ij's own probability
          − P_ij Σ_l dP_il P_il                   term 2: S_ij's share of the row's normaliser
            (masked entries and empty rows have P = 0, so their dS is 0)
    dq = dS k / √d_k
    dk = dSᵀ q / √d_k

Shared keys and values (grouped-query attention). k and v may have a size-1 leading axis where
q has several entries: the queries along that axis all attend to the same keys and values, as
NumPy broadcasting reads `q kᵀ` and `P v`. Grouped-query attention (Llama's n_kv_head key/value
heads for n_head query heads, numformer.ops.mha) calls it with q (B, n_kv_head, g, Tq, d_k) and
k, v (B, n_kv_head, 1, Tk, ·), g = n_head / n_kv_head. The forward is the formula above for each
query head. In the backward a shared key receives the gradient of every query head that read it:
    dk = Σ_group dSᵀ q / √d_k,   dv = Σ_group P̃ᵀ dy      summed over each broadcast axis (`sum_to`)

With keep_probs=False the cache leaves P out and backward computes it again from q and k.
numformer.ops.fast.attention computes the same in cache-sized blocks and causal chunks.
"""

import math
from typing import NamedTuple

import numpy as np

from numformer.ops.dropout import check_p, keep_mask


class Cache(NamedTuple):
    """What backward needs. numformer.ops.fast.attention makes the same, keeping P and M by query
    chunk (a list of (..., rows, keys) arrays) and filling the fields after `dropout` too."""

    q: np.ndarray                   # (..., Tq, d_k)
    k: np.ndarray                   # (..., Tk, d_k)
    v: np.ndarray                   # (..., Tk, d_v)
    causal: bool
    mask: np.ndarray | None
    probs: object                   # P, or None with keep_probs=False (backward computes it again)
    dropout: object                 # M / (1 − p), or None without dropout
    row_stats: tuple | None = None  # fast, keep_probs=False: each query row's max score and 1/Σexp
    block: int | None = None        # fast: the score blocks' size forward used
    qrows: int | None = None        # fast: the causal query chunks' rows forward was given
    masking: object = None          # fast: which keys each query sees, as its softmax takes them


def probabilities(q, k, causal=False, mask=None):
    """P = softmax(q kᵀ / √d_k + mask) over the keys, (..., Tq, Tk); rows with no key are 0."""
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])          # S (..., Tq, Tk)
    allowed = allowed_keys(s.shape, causal, mask)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)                         # numerical care: −inf, never −1e4
    row_max = s.max(axis=-1, keepdims=True) if s.shape[-1] else np.zeros((*s.shape[:-1], 1), s.dtype)
    row_max[row_max == -np.inf] = 0.0                             # numerical care: an empty row
    e = np.exp(s - row_max)                                       # numerical care: max-subtraction
    denom = e.sum(axis=-1, keepdims=True)
    denom[denom == 0] = 1.0                                       # empty row: P = 0 / 1 = 0
    return e / denom


def forward(q, k, v, causal=False, mask=None, dropout_p=0.0, rng=None, keep_probs=True):
    """y = softmax(q kᵀ / √d_k + mask) v. Returns (y, cache)."""
    check_shapes(q, k, v)
    check_p(dropout_p, "attention")
    p = probabilities(q, k, causal, mask)                         # (..., Tq, Tk)
    m = None
    if dropout_p > 0.0:                                           # M / (1 − p); p = 1 keeps nothing
        m = keep_mask(p.shape, dropout_p, rng).astype(p.dtype)
        m *= 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0
    y = (p if m is None else p * m) @ v                           # (..., Tq, d_v)
    return y, Cache(q, k, v, causal, mask, p if keep_probs else None, m)


def backward(dy, cache):
    """Returns (dq, dk, dv)."""
    q, k, v, p, m = cache.q, cache.k, cache.v, cache.probs, cache.dropout
    if dy.shape != (*q.shape[:-1], v.shape[-1]):
        raise ValueError(f"attention: dy has shape {dy.shape} but y had shape {(*q.shape[:-1], v.shape[-1])}")
    if p is None:
        p = probabilities(q, k, cache.causal, cache.mask)         # P again (keep_probs=False)
    p_used = p if m is None else p * m                            # P̃
    dv = p_used.swapaxes(-1, -2) @ dy                             # dv = P̃ᵀ dy
    dp = dy @ v.swapaxes(-1, -2)                                  # dP̃ = dy vᵀ
    if m is not None:
        dp = dp * m                                               # dP = dP̃ ⊙ M / (1 − p)
    ds = p * dp                                                   # term 1
    ds -= p * ds.sum(axis=-1, keepdims=True)                      # term 2: Σ_l dP_il P_il = Σ_l ds_il
    scale = 1.0 / math.sqrt(q.shape[-1])
    dq = ds @ k * scale                                           # dq = dS k / √d_k
    dk = ds.swapaxes(-1, -2) @ q * scale                          # dk = dSᵀ q / √d_k
    return dq, sum_to(dk, k.shape), sum_to(dv, v.shape)           # shared heads: Σ over the group


def check_shapes(q, k, v):
    """ValueError unless q (..., Tq, d_k), k (..., Tk, d_k) and v (..., Tk, d_v) fit, the leading
    dimensions of k and v equal and broadcastable to q's (shared key/value heads)."""
    ok = (q.ndim >= 2 and k.ndim == q.ndim and v.ndim == q.ndim
          and k.shape[:-2] == v.shape[:-2] and broadcasts_to(k.shape[:-2], q.shape[:-2])
          and q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2])
    if not ok:
        raise ValueError(f"attention: q has shape {q.shape}, k has shape {k.shape}, v has shape "
                         f"{v.shape}; need q (..., Tq, d_k), k (..., Tk, d_k), v (..., Tk, d_v)")


def broadcasts_to(shape, target):
    """True when an array of `shape` broadcasts to `target` without growing it: every axis is
    the target's or 1."""
    return len(shape) == len(target) and all(s in (t, 1) for s, t in zip(shape, target))


def sum_to(a, shape):
    """a summed over the axes where `shape` has 1 and a does not: the gradient of an input that
    was broadcast along them (a shared key or value head gets the sum of its group's)."""
    axes = tuple(i for i, (n, s) in enumerate(zip(a.shape, shape)) if s == 1 and n != 1)
    return a.sum(axis=axes, keepdims=True) if axes else a


def allowed_keys(score_shape, causal=False, mask=None):
    """Boolean array broadcastable to score_shape (..., Tq, Tk), True where query i may see key
    j; None when everything is allowed."""
    Tq, Tk = score_shape[-2:]
    allowed = None
    if causal:
        allowed = np.tri(Tq, Tk, k=Tk - Tq, dtype=bool)   # key j <= Tk − Tq + i, (Tq, Tk)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"attention: mask must be boolean (True = may attend), got dtype {mask.dtype}")
        try:
            fits = np.broadcast_shapes(mask.shape, tuple(score_shape)) == tuple(score_shape)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"attention: mask has shape {mask.shape}, not broadcastable to the "
                             f"scores' shape {tuple(score_shape)}")
        allowed = mask if allowed is None else allowed & mask
    return allowed
