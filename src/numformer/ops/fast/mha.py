"""Multi-head attention, the fast version: numformer.ops.mha (read it for the formula) with the
fast attention for the heads; the same signatures and cache."""

from numformer.ops.fast import attention
from numformer.ops.mha import Cache, head_gradients, heads, merge_heads, merged


def forward(q, k, v, n_head, causal=True, mask=None, dropout_p=0.0, rng=None, keep_probs=True, kv=None,
            block=attention.BLOCK, qrows=None):
    """See numformer.ops.mha.forward; `block` and `qrows` go to the fast attention. Returns (y, cache)."""
    q, k, v = heads(q, k, v, n_head, kv)                              # (B, nh, T, hs); k, v: (B, nh, t0+T, hs)
    y, att_cache = attention.forward(q, k, v, causal=causal, mask=mask, dropout_p=dropout_p, rng=rng,
                                     keep_probs=keep_probs, block=block, qrows=qrows)   # (B, nh, T, hs)
    return merge_heads(y), Cache(att_cache, n_head)                   # (B, T, C)


def backward(dy, cache, out=None):
    """See numformer.ops.mha.backward. Returns (dq, dk, dv)."""
    dq, dk, dv = attention.backward(head_gradients(dy, cache), cache.attention)   # each (B, nh, T, hs)
    return merged(dq, dk, dv, out)
