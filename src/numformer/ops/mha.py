"""Multi-head attention (the article's formula 4): the step between the projections.

    MultiHead(x) = Concat(head_1, …, head_nh) W_O,   head_h = Attention(x W_h^Q, x W_h^K, x W_h^V)

The projections q = x W^Q, k = x W^K, v = x W^V (GPT-2 makes the three with one fused map,
c_attn) and the output map W_O (c_proj) are linear maps, ops.linear or ops.lora with an
adapter, which the model calls itself: they carry the layers' names and adapters. This op is
what lies between them:

Forward
    q, k, v (B, T, C), C = nh·hs        from the projections (views of one fused output are fine)
    q_h = q[..., h·hs:(h+1)·hs]          split into heads: (B, nh, T, hs), views (the same for k, v)
    KV cache (decoding): with kv = (K, V, t0), K and V (B, nh, T_max, hs), the heads' keys and
        values are written at positions t0 .. t0+T−1, and the heads attend to positions
        0 .. t0+T−1 of K and V
    head_h = attention(q_h, k_h, v_h)    (B, nh, T, hs), causal by default
    y = Concat(head_1 .. head_nh)        (B, T, C)

Backward: splitting and concatenating heads only move numbers, so their backward moves them back
    d head = dy split into heads         (B, nh, T, hs)
    dq_h, dk_h, dv_h = attention backward
    dq, dk, dv = each concatenated back  (B, T, C)
    dqkv = [dq dk dv]                    (B, T, 3C), side by side (backward_qkv): the gradient of
                                          GPT-2's fused projection c_attn, which made q, k and v
                                          as the three column blocks of one output
A forward that read earlier positions from a KV cache has no backward here: decoding needs none.

All heads go through attention together, as one batched (B, nh, ·, ·) product. Grouped-query
attention (fewer key/value heads than query heads) and rotary position embeddings (q_h and k_h
rotated by their position, before the KV cache) belong between the split and attention.
"""

from typing import NamedTuple

import numpy as np

from numformer.ops import attention


class Cache(NamedTuple):
    """What backward needs (numformer.ops.fast.mha makes the same)."""

    attention: object       # the attention op's cache, of all heads at once
    n_head: int


def check_shapes(q, k, v, n_head):
    """ValueError unless q, k and v are (B, T, C) alike, with C divisible by n_head."""
    if q.ndim != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"mha: q has shape {q.shape}, k {k.shape}, v {v.shape}; need three (B, T, C)")
    if n_head < 1 or q.shape[-1] % n_head:
        raise ValueError(f"mha: q has shape {q.shape}; C = {q.shape[-1]} is not divisible by n_head = {n_head}")


def split_heads(a, n_head):
    """(B, T, nh·hs) -> (B, nh, T, hs): a view of the same memory wherever a's rows are
    contiguous (the projections' outputs and column blocks of them are)."""
    B, T, C = a.shape
    return a.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(heads):
    """(B, nh, T, hs) -> (B, T, nh·hs): the heads side by side."""
    B, nh, T, hs = heads.shape
    return heads.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


def heads(q, k, v, n_head, kv=None):
    """Forward's first step: q, k and v (B, T, C) split into heads (B, nh, T, hs); with a KV
    cache kv = (K, V, t0), the new keys and values written into it and K, V's positions
    0 .. t0+T−1 returned as k and v."""
    check_shapes(q, k, v, n_head)
    q, k, v = split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)
    if kv is not None:
        K, V, t0 = kv
        T = q.shape[2]
        K[:, :, t0:t0 + T], V[:, :, t0:t0 + T] = k, v
        k, v = K[:, :, :t0 + T], V[:, :, :t0 + T]                    # (B, nh, t0+T, hs)
    return q, k, v


def head_gradients(dy, cache):
    """Backward's first step: dy (B, T, C) split into the heads' gradients."""
    att = cache.attention
    if att.k.shape[-2] != dy.shape[1]:
        raise ValueError(f"mha: forward read {att.k.shape[-2] - dy.shape[1]} earlier positions from a KV "
                         f"cache; there is no backward through it")
    return split_heads(dy, cache.n_head)


def forward(q, k, v, n_head, causal=True, mask=None, dropout_p=0.0, rng=None, keep_probs=True, kv=None):
    """y = Concat(head_1 .. head_nh), head_h = attention(q_h, k_h, v_h). Returns (y, cache).

    mask is broadcastable to (B, nh, T, T), True = may attend; dropout_p applies to the attention
    probabilities; with keep_probs=False attention keeps no P and backward computes it again (see
    attention.py). kv = (K, V, t0) is a layer's KV cache (see `heads`)."""
    q, k, v = heads(q, k, v, n_head, kv)                              # (B, nh, T, hs); k, v: (B, nh, t0+T, hs)
    y, att_cache = attention.forward(q, k, v, causal=causal, mask=mask, dropout_p=dropout_p, rng=rng,
                                     keep_probs=keep_probs)           # (B, nh, T, hs)
    return merge_heads(y), Cache(att_cache, n_head)                   # (B, T, C)


def backward(dy, cache):
    """Returns (dq, dk, dv), each (B, T, C)."""
    dq, dk, dv = attention.backward(head_gradients(dy, cache), cache.attention)   # each (B, nh, T, hs)
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)


def backward_qkv(dy, cache):
    """Returns dqkv (B, T, 3C): dq, dk and dv side by side, the gradient of one fused projection
    whose output's three column blocks were q, k and v (GPT-2's c_attn)."""
    return np.concatenate(backward(dy, cache), axis=-1)
