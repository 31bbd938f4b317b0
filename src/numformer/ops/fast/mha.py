"""Multi-head attention, the fast version: numformer.ops.mha (read it for the formula) with the
fast attention and the fast RoPE for the heads; the same signatures and cache. backward_qkv writes
the heads' gradients straight into the three column blocks of one (B, T, 3C) array, where the
reference makes three (B, T, C) arrays and concatenates them: the same numbers, one copy fewer
(with shared key/value heads or RoPE it concatenates, as the reference does)."""

import numpy as np

from numformer.ops.fast import attention, rope
from numformer.ops.mha import Cache, grouped, head_gradients, heads, merge_heads, merged


def forward(q, k, v, n_head, causal=True, mask=None, dropout_p=0.0, rng=None, keep_probs=True, kv=None,
            n_kv_head=None, rope_theta=None, block=attention.BLOCK, qrows=None):
    """See numformer.ops.mha.forward; `block` and `qrows` go to the fast attention. Returns (y, cache)."""
    q, k, v, rotated = heads(q, k, v, n_head, kv, n_kv_head, rope_theta, rope)   # (B, nh, T, hs); k, v: (B, nkv, t0+T, hs)
    q_a, k_a, v_a, mask = grouped(q, k, v, n_kv_head, mask)                     # grouped-query: (B, nkv, g, T, hs), ...
    y, att_cache = attention.forward(q_a, k_a, v_a, causal=causal, mask=mask, dropout_p=dropout_p, rng=rng,
                                     keep_probs=keep_probs, block=block, qrows=qrows)   # (B, nh, T, hs) or grouped
    return merge_heads(y.reshape(q.shape)), Cache(att_cache, n_head, n_kv_head, rotated)   # (B, T, C)


def backward(dy, cache):
    """See numformer.ops.mha.backward. Returns (dq, dk, dv)."""
    dq, dk, dv = attention.backward(head_gradients(dy, cache), cache.attention)
    return merged(dq, dk, dv, cache, rope)


def backward_qkv(dy, cache):
    """See numformer.ops.mha.backward_qkv. Returns dqkv (B, T, 3C)."""
    if cache.rope is not None or cache.attention.q.ndim != 4:     # RoPE or shared heads: the widths differ
        return np.concatenate(backward(dy, cache), axis=-1)
    dq, dk, dv = attention.backward(head_gradients(dy, cache), cache.attention)   # each (B, nh, T, hs)
    B, nh, T, hs = dq.shape
    dqkv = np.empty((B, T, 3, nh, hs), dtype=dq.dtype)                # (B, T, 3C) as its three blocks of heads
    for i, d in enumerate((dq, dk, dv)):
        dqkv[:, :, i] = d.transpose(0, 2, 1, 3)                       # head h of block i: columns i·C + h·hs ...
    return dqkv.reshape(B, T, 3 * nh * hs)
