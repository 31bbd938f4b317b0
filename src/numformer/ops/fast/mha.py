"""Multi-head attention, the fast version: numformer.ops.mha (read it for the formula) with the
fast attention for the heads; the same signatures and cache. backward_qkv writes the heads'
gradients straight into the three column blocks of one (B, T, 3C) array, where the reference
makes three (B, T, C) arrays and concatenates them: the same numbers, one copy fewer."""

import numpy as np

from numformer.ops.fast import attention
from numformer.ops.mha import Cache, head_gradients, heads, merge_heads


def forward(q, k, v, n_head, causal=True, mask=None, dropout_p=0.0, rng=None, keep_probs=True, kv=None,
            block=attention.BLOCK, qrows=None):
    """See numformer.ops.mha.forward; `block` and `qrows` go to the fast attention. Returns (y, cache)."""
    q, k, v = heads(q, k, v, n_head, kv)                              # (B, nh, T, hs); k, v: (B, nh, t0+T, hs)
    y, att_cache = attention.forward(q, k, v, causal=causal, mask=mask, dropout_p=dropout_p, rng=rng,
                                     keep_probs=keep_probs, block=block, qrows=qrows)   # (B, nh, T, hs)
    return merge_heads(y), Cache(att_cache, n_head)                   # (B, T, C)


def backward(dy, cache):
    """See numformer.ops.mha.backward. Returns (dq, dk, dv)."""
    dq, dk, dv = attention.backward(head_gradients(dy, cache), cache.attention)   # each (B, nh, T, hs)
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)


def backward_qkv(dy, cache):
    """See numformer.ops.mha.backward_qkv. Returns dqkv (B, T, 3C)."""
    dq, dk, dv = attention.backward(head_gradients(dy, cache), cache.attention)   # each (B, nh, T, hs)
    B, nh, T, hs = dq.shape
    dqkv = np.empty((B, T, 3, nh, hs), dtype=dq.dtype)                # (B, T, 3C) as its three blocks of heads
    for i, d in enumerate((dq, dk, dv)):
        dqkv[:, :, i] = d.transpose(0, 2, 1, 3)                       # head h of block i: columns i·C + h·hs ...
    return dqkv.reshape(B, T, 3 * nh * hs)
