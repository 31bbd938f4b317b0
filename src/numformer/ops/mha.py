"""Multi-head attention (the article's formula 4): the step between the projections.

    MultiHead(x) = Concat(head_1, …, head_nh) W_O,   head_h = Attention(x W_h^Q, x W_h^K, x W_h^V)

The projections q = x W^Q, k = x W^K, v = x W^V (GPT-2 makes the three with one fused map,
c_attn; Llama with three, q_proj, k_proj, v_proj) and the output map W_O (c_proj, o_proj) are
linear maps, ops.linear or ops.lora with an adapter, which the model calls itself: they carry the
layers' names and adapters. This op is what lies between them:

Forward
    q (B, T, nh·hs), k, v (B, T, nkv·hs)  from the projections (views of one fused output are fine);
                                          nkv = n_kv_head, nh by default
    q_h = q[..., h·hs:(h+1)·hs]          split into heads: (B, nh, T, hs), views; k, v: (B, nkv, T, hs)
    RoPE (rope_theta given, Llama):      q_h and k_h rotated by their positions t0 .. t0+T−1
                                          (ops.rope), before the KV cache: a key's rotation depends
                                          on its own position only, so the cache keeps rotated keys
    KV cache (decoding): with kv = (K, V, t0), K and V (B, nkv, T_max, hs), the heads' keys and
        values are written at positions t0 .. t0+T−1, and the heads attend to positions
        0 .. t0+T−1 of K and V
    head_h = attention(q_h, k_j, v_j)    (B, nh, T, hs), causal by default, j = h // g: grouped-query
                                          attention, g = nh / nkv query heads share each key/value
                                          head (nkv = 1: multi-query attention; nkv = nh: one each)
    y = Concat(head_1 .. head_nh)        (B, T, C)

Grouped-query attention is the attention op's shared heads (ops.attention): the query heads are
viewed as (B, nkv, g, T, hs) and the key/value heads as (B, nkv, 1, T, hs), and attention
broadcasts the keys along each group, as Hugging Face's repeat_kv copies them. Only the nkv heads
are stored, in the KV cache too.

Backward: splitting and concatenating heads only move numbers, so their backward moves them back
    d head = dy split into heads         (B, nh, T, hs)
    dq_h, dk_j, dv_j = attention backward, each shared head's dk_j and dv_j the sum over its group
    dq_h, dk_j = RoPE backward           the rotation by −angle, when forward rotated
    dq, dk, dv = each concatenated back  (B, T, C) and (B, T, nkv·hs)
    dqkv = [dq dk dv]                    side by side (backward_qkv): the gradient of GPT-2's fused
                                          projection c_attn, which made q, k and v as the three
                                          column blocks of one output
A forward that read earlier positions from a KV cache has no backward here: decoding needs none.

All heads go through attention together, as one batched (B, nh, ·, ·) product.
"""

from typing import NamedTuple

import numpy as np

from numformer.ops import attention, rope


class Cache(NamedTuple):
    """What backward needs (numformer.ops.fast.mha makes the same)."""

    attention: object       # the attention op's cache, of all heads at once
    n_head: int
    n_kv_head: int | None = None   # key/value heads, when fewer than n_head (grouped-query attention)
    rope: tuple | None = None      # (q's, k's) rope caches, when forward rotated them


def check_shapes(q, k, v, n_head, n_kv_head=None):
    """ValueError unless q (B, T, nh·hs) and k, v (B, T, nkv·hs) fit n_head and n_kv_head heads of
    one size hs (n_kv_head None: n_head)."""
    nkv = n_head if n_kv_head is None else n_kv_head
    if q.ndim != 3 or k.ndim != 3 or v.shape != k.shape or k.shape[:2] != q.shape[:2]:
        raise ValueError(f"mha: q has shape {q.shape}, k {k.shape}, v {v.shape}; need three (B, T, C)")
    if n_head < 1 or q.shape[-1] % n_head:
        raise ValueError(f"mha: q has shape {q.shape}; C = {q.shape[-1]} is not divisible by n_head = {n_head}")
    if nkv < 1 or n_head % nkv:
        raise ValueError(f"mha: n_head = {n_head} is not divisible by n_kv_head = {nkv}")
    if k.shape[-1] != nkv * (q.shape[-1] // n_head):
        raise ValueError(f"mha: q has shape {q.shape}, k {k.shape}, v {v.shape}; {nkv} key/value heads of "
                         f"hs = {q.shape[-1] // n_head} need k and v of width {nkv * (q.shape[-1] // n_head)}")


def split_heads(a, n_head):
    """(B, T, nh·hs) -> (B, nh, T, hs): a view of the same memory wherever a's rows are
    contiguous (the projections' outputs and column blocks of them are)."""
    B, T, C = a.shape
    return a.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(heads):
    """(B, nh, T, hs) -> (B, T, nh·hs): the heads side by side."""
    B, nh, T, hs = heads.shape
    return heads.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)


def heads(q, k, v, n_head, kv=None, n_kv_head=None, rope_theta=None, rope_op=rope):
    """Forward's first step: q (B, T, nh·hs) and k, v (B, T, nkv·hs) split into heads (B, nh, T, hs)
    and (B, nkv, T, hs); q and k rotated by rope_op (ops.rope or its fast version) when rope_theta
    is given; with a KV cache kv = (K, V, t0), the new keys and values written into it and K, V's
    positions 0 .. t0+T−1 returned as k and v. Returns (q, k, v, rope caches or None)."""
    check_shapes(q, k, v, n_head, n_kv_head)
    nkv = n_head if n_kv_head is None else n_kv_head
    q, k, v = split_heads(q, n_head), split_heads(k, nkv), split_heads(v, nkv)
    t0 = 0 if kv is None else kv[2]
    rotated = None
    if rope_theta is not None:
        q, rope_q = rope_op.forward(q, rope_theta, start=t0)         # (B, nh, T, hs)
        k, rope_k = rope_op.forward(k, rope_theta, start=t0)         # (B, nkv, T, hs)
        rotated = (rope_q, rope_k)
    if kv is not None:
        K, V, _ = kv
        T = q.shape[2]
        K[:, :, t0:t0 + T], V[:, :, t0:t0 + T] = k, v
        k, v = K[:, :, :t0 + T], V[:, :, :t0 + T]                    # (B, nkv, t0+T, hs)
    return q, k, v, rotated


def grouped(q, k, v, n_kv_head, mask=None):
    """(q, k, v, mask) as attention takes them: unchanged with one key/value head per query head,
    else q (B, nh, T, hs) viewed as (B, nkv, g, T, hs) and k, v as (B, nkv, 1, Tk, hs), which
    attention broadcasts along each group of g query heads; a mask (·, nh or 1, ·, Tk) given the
    same grouping."""
    B, nh, T, hs = q.shape
    if n_kv_head is None or n_kv_head == nh:
        return q, k, v, mask
    g = nh // n_kv_head
    if mask is not None:
        mask = np.asarray(mask)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)                 # (·, nh or 1, ·, Tk)
        heads_axis = (n_kv_head, g) if mask.shape[1] == nh else (1, 1)
        mask = mask.reshape(mask.shape[0], *heads_axis, *mask.shape[2:])        # (·, nkv or 1, g or 1, ·, Tk)
    return q.reshape(B, n_kv_head, g, T, hs), k[:, :, None], v[:, :, None], mask


def head_gradients(dy, cache):
    """Backward's first step: dy (B, T, C) split into the heads' gradients, grouped as forward
    gave the heads to attention."""
    att = cache.attention
    if att.k.shape[-2] != dy.shape[1]:
        raise ValueError(f"mha: forward read {att.k.shape[-2] - dy.shape[1]} earlier positions from a KV "
                         f"cache; there is no backward through it")
    dy = split_heads(dy, cache.n_head)                              # (B, nh, T, hs)
    return dy.reshape(att.q.shape) if att.q.ndim == 5 else dy       # grouped: (B, nkv, g, T, hs), a view


def merged(dq, dk, dv, cache, rope_op=rope):
    """Backward's last step: the heads' gradients as attention returned them, ungrouped, RoPE's
    backward applied where forward rotated, and each concatenated to (B, T, ·)."""
    if dq.ndim == 5:                                                # grouped-query: back to (B, nh, T, hs)
        B, nkv, g, T, hs = dq.shape
        dq, dk, dv = dq.reshape(B, nkv * g, T, hs), dk[:, :, 0], dv[:, :, 0]
    if cache.rope is not None:
        dq, dk = rope_op.backward(dq, cache.rope[0]), rope_op.backward(dk, cache.rope[1])
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)


def forward(q, k, v, n_head, causal=True, mask=None, dropout_p=0.0, rng=None, keep_probs=True, kv=None,
            n_kv_head=None, rope_theta=None):
    """y = Concat(head_1 .. head_nh), head_h = attention(q_h, k_j, v_j), j = h // (nh / nkv).
    Returns (y, cache).

    mask is broadcastable to (B, nh, T, T), True = may attend; dropout_p applies to the attention
    probabilities; with keep_probs=False attention keeps no P and backward computes it again (see
    attention.py). kv = (K, V, t0) is a layer's KV cache (see `heads`). n_kv_head: key/value heads
    (default n_head); rope_theta: rotate q and k (ops.rope) with this θ (default: no rotation)."""
    q, k, v, rotated = heads(q, k, v, n_head, kv, n_kv_head, rope_theta)   # (B, nh, T, hs); k, v: (B, nkv, t0+T, hs)
    q_a, k_a, v_a, mask = grouped(q, k, v, n_kv_head, mask)         # grouped-query: (B, nkv, g, T, hs), ...
    y, att_cache = attention.forward(q_a, k_a, v_a, causal=causal, mask=mask, dropout_p=dropout_p, rng=rng,
                                     keep_probs=keep_probs)               # (B, nh, T, hs) or grouped
    return merge_heads(y.reshape(q.shape)), Cache(att_cache, n_head, n_kv_head, rotated)   # (B, T, C)


def backward(dy, cache):
    """Returns (dq, dk, dv), (B, T, nh·hs) and (B, T, nkv·hs) twice."""
    dq, dk, dv = attention.backward(head_gradients(dy, cache), cache.attention)
    return merged(dq, dk, dv, cache)


def backward_qkv(dy, cache):
    """Returns dqkv (B, T, nh·hs + 2·nkv·hs): dq, dk and dv side by side, the gradient of one fused
    projection whose output's three column blocks were q, k and v (GPT-2's c_attn)."""
    return np.concatenate(backward(dy, cache), axis=-1)
