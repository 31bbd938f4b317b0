"""Multi-head attention (the article's formula 4) with GPT-2's fused QKV projection.

Forward
    [q | k | v] = x W_qkvᵀ + b_qkv                (B, T, 3C)  one linear map, GPT-2's c_attn
    q, k, v split into nh heads of size hs = C / nh:
        q_h = q[..., h·hs:(h+1)·hs]                (B, nh, T, hs)  (same for k, v)
    head_h = attention(q_h, k_h, v_h)              (B, nh, T, hs)  causal by default
    a = Concat(head_1 .. head_nh)                  (B, T, C)
    y = a W_oᵀ + b_o                               (B, T, C)       GPT-2's c_proj
    x (B, T, C)   W_qkv (3C, C) with rows [W_q; W_k; W_v] (PyTorch layout)   b_qkv (3C,) or None
    W_o (C, C)   b_o (C,) or None

Backward: each step above in reverse; splitting and concatenating heads are reshapes, so their
backward is the inverse reshape:
    da, dW_o, db_o       = linear backward of y = a W_oᵀ + b_o
    d head_h             = da split into heads
    dq_h, dk_h, dv_h     = attention backward
    d[q | k | v]         = the three merged back into (B, T, 3C)
    dx, dW_qkv, db_qkv   = linear backward of the fused projection

All heads go through attention together as one batched (B, nh, ·, ·) matmul; q, k and v are
strided views into the fused projection's output, so splitting copies nothing.
"""

import numpy as np

from numformer.ops import attention, linear


def forward(x, w_qkv, b_qkv, w_o, b_o, n_head, causal=True, mask=None, dropout_p=0.0, rng=None,
            keep_input=True, keep_probs=True):
    """y = Concat(head_1..head_nh) W_oᵀ + b_o with heads from one fused QKV map. Returns (y, cache).

    mask is broadcastable to (B, nh, T, T), True = may attend; dropout_p applies to the
    attention probabilities (see attention.py). With keep_input=False the cache leaves out x
    and backward must be given it back (see linear.py); with keep_probs=False attention does not
    keep P and backward computes it again (see attention.py).
    """
    return forward_with(attention, x, w_qkv, b_qkv, w_o, b_o, n_head, causal, mask, dropout_p, rng,
                        keep_input, keep_probs)


def forward_with(attention, x, w_qkv, b_qkv, w_o, b_o, n_head, causal=True, mask=None, dropout_p=0.0,
                 rng=None, keep_input=True, keep_probs=True, **attention_kwargs):
    """forward, with the given attention module (numformer.ops.attention or its fast version) for
    the heads, which also gets attention_kwargs; the cache remembers the module, for backward."""
    if x.ndim != 3:
        raise ValueError(f"mha: x has shape {x.shape}, expected (B, T, C)")
    B, T, C = x.shape
    if w_qkv.shape != (3 * C, C) or w_o.shape != (C, C):
        raise ValueError(f"mha: x has shape {x.shape}, w_qkv has shape {w_qkv.shape} and w_o has "
                         f"shape {w_o.shape}; need ({3 * C}, {C}) and ({C}, {C})")
    if n_head < 1 or C % n_head:
        raise ValueError(f"mha: x has shape {x.shape}; C = {C} is not divisible by n_head = {n_head}")
    hs = C // n_head

    qkv, qkv_cache = linear.forward(x, w_qkv, b_qkv, keep_input=keep_input)   # (B, T, 3C)
    heads = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs) view
    q, k, v = heads                                                   # each (B, nh, T, hs)
    att, att_cache = attention.forward(q, k, v, causal=causal, mask=mask,
                                       dropout_p=dropout_p, rng=rng, keep_probs=keep_probs,
                                       **attention_kwargs)  # (B, nh, T, hs)
    a = att.transpose(0, 2, 1, 3).reshape(B, T, C)                    # (B, T, C) concat heads
    y, out_cache = linear.forward(a, w_o, b_o)                        # (B, T, C)
    return y, (attention, qkv_cache, att_cache, out_cache, (B, T, C, n_head))


def backward(dy, cache, x=None):
    """Returns (dx, dw_qkv, db_qkv, dw_o, db_o); bias gradients are None where biases were. x is
    forward's input, needed only when forward was called with keep_input=False."""
    attention, qkv_cache, att_cache, out_cache, (B, T, C, n_head) = cache
    hs = C // n_head
    da, dw_o, db_o = linear.backward(dy, out_cache)                   # (B, T, C)
    datt = da.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)         # (B, nh, T, hs) view
    dq, dk, dv = attention.backward(datt, att_cache)                  # each (B, nh, T, hs)
    dqkv = np.empty((B, T, 3, n_head, hs), dtype=dq.dtype)            # (B, T, 3, nh, hs)
    dqkv[:, :, 0] = dq.transpose(0, 2, 1, 3)
    dqkv[:, :, 1] = dk.transpose(0, 2, 1, 3)
    dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)
    dx, dw_qkv, db_qkv = linear.backward(dqkv.reshape(B, T, 3 * C), qkv_cache, x=x)
    return dx, dw_qkv, db_qkv, dw_o, db_o
