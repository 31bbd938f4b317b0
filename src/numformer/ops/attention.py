"""Scaled dot-product attention (the seed's formula 3): y = softmax(q kᵀ / √d_k + mask) v.

Forward
    S   = q kᵀ / √d_k                            (..., Tq, Tk)  scores
    S_ij = −inf where query i may not see key j   (causal and/or `mask`)
    P   = softmax over j of S                     (..., Tq, Tk)  attention probabilities
    P̃   = P ⊙ M / (1 − p)                         inverted dropout on P (M ~ Bernoulli(1 − p));
                                                  P̃ = P when dropout_p = 0
    y   = P̃ v                                     (..., Tq, d_v)
    q (..., Tq, d_k)   k (..., Tk, d_k)   v (..., Tk, d_v); leading dims equal, e.g. (B, nh).
    Tq ≠ Tk is cross-attention (or decoding with a KV cache).

Which keys a query may see
    mask: boolean, broadcastable to (..., Tq, Tk), True = may attend (e.g. a key padding mask of
    shape (B, 1, 1, Tk)). causal=True is bottom-right aligned: query i (0-based among the Tq)
    sits at absolute position Tk − Tq + i and may see keys 0 .. Tk − Tq + i. With Tq = Tk that is
    the usual lower triangle; with Tq < Tk the queries are the last Tq positions of the sequence,
    which is what a KV cache needs. Both together: a key must be allowed by both.

Work and memory skipped under a causal mask (see _QROWS): query rows are taken in chunks, each
against only the keys its last row may see, so the upper triangle of S, where P = 0, is neither
computed nor kept (the dropout mask, when there is one, is still drawn and kept whole). P is
stored chunk by chunk, or with keep_probs=False not at all (backward recomputes it); backward
sums each key's dk and dv over chunks.

A query row with no allowed key (all −inf) outputs zeros and passes zero gradient to q, k and v.
(Softmax of an all −inf row is 0/0; we define its probabilities as 0, not NaN and not uniform.)

Backward (dy = ∂L/∂y)
    dP̃ = dy vᵀ                                    y = P̃ v, through P̃
    dv = P̃ᵀ dy                                    y = P̃ v, through v
    dP = dP̃ ⊙ M / (1 − p)                          dropout: the same mask as forward
    dS_ij = P_ij dP_ij                            term 1: S_ij's own probability
          − P_ij Σ_l dP_il P_il                   term 2: S_ij's share of the row's normaliser
            (masked entries and empty rows have P = 0, so their dS is 0)
    dq = dS k / √d_k
    dk = dSᵀ q / √d_k
    (S is computed as (q / √d_k) kᵀ and dk as dSᵀ (q / √d_k): the scale then multiplies arrays of
    T·d_k entries instead of T·T.)
"""

import math

import numpy as np

from numformer.ops.dropout import check_p, keep_mask


def _check_shapes(q, k, v):
    ok = (q.ndim >= 2 and k.ndim == q.ndim and v.ndim == q.ndim
          and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]
          and q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2])
    if not ok:
        raise ValueError(f"attention: q has shape {q.shape}, k has shape {k.shape}, v has shape "
                         f"{v.shape}; need q (..., Tq, d_k), k (..., Tk, d_k), v (..., Tk, d_v)")


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


_BIAS_CACHE = {}


def _causal_bias(Tq, Tk, dtype):
    """(Tq, Tk) additive causal mask: 0 where key j <= Tk − Tq + i, −inf elsewhere. Read-only and
    cached per shape and dtype, since every layer of every step asks for the same one."""
    key = (Tq, Tk, np.dtype(dtype))
    bias = _BIAS_CACHE.get(key)
    if bias is None:
        bias = np.where(np.tri(Tq, Tk, k=Tk - Tq, dtype=bool), 0.0, -np.inf).astype(dtype)
        bias.setflags(write=False)
        if len(_BIAS_CACHE) > 256:
            _BIAS_CACHE.clear()
        _BIAS_CACHE[key] = bias
    return bias


# The scores of a long sequence are large ((B, nh, T, T) = 12.6 MB for B 8, nh 6, T 256) and the
# softmax and its backward pass over them several times. Working on a few batch items at a time,
# (items, nh, Tq, Tk) with at most this many elements, keeps each block in the CPU cache between
# passes. Every block computes exactly what the whole array would; only the memory traffic changes.
_BLOCK = 1 << 17


def _blocks(q_shape, Tk):
    """Index tuples that cover the leading dimensions in blocks of about _BLOCK score elements:
    slices along axis 0, or, when one item of axis 0 is already larger, single items of axis 0
    with slices along axis 1 (e.g. a few heads of one sequence). One block when q has no
    leading dimensions."""
    if len(q_shape) < 3:
        return [(slice(None),)]
    per_item = math.prod(q_shape[1:-1]) * Tk
    if per_item <= _BLOCK or len(q_shape) < 4:
        step = max(1, _BLOCK // max(per_item, 1))
        return [(slice(i, i + step),) for i in range(0, q_shape[0], step)]
    per_sub = math.prod(q_shape[2:-1]) * Tk
    step = max(1, _BLOCK // max(per_sub, 1))
    return [(i, slice(j, j + step)) for i in range(q_shape[0]) for j in range(0, q_shape[1], step)]


# With a causal mask the query rows are also taken in chunks of this many: rows [a, b) can see no
# key beyond Tk − Tq + b − 1, so their scores are computed against those keys only, and the
# masked upper triangle, about half of S, is neither multiplied nor exponentiated (for T = 256
# and chunks of 64, 62.5 % of the score work remains). Sequences shorter than two chunks are one.
_QROWS = 64


def _query_chunks(Tq, Tk, chunked):
    """(a, b, e) triples: query rows [a, b) see at most the keys [0, e)."""
    if not chunked or Tq < 2 * _QROWS:
        return [(0, Tq, Tk)]
    return [(a, min(a + _QROWS, Tq), min(Tk, max(0, Tk - Tq + min(a + _QROWS, Tq))))
            for a in range(0, Tq, _QROWS)]


def _part(a, blk, ndim):
    """The block `blk` of an array broadcast against the scores (ndim dims): each leading axis
    the array has in full is indexed like the scores, each it broadcasts along is kept."""
    if a is None:
        return a
    a = a.reshape((1,) * (ndim - a.ndim) + a.shape)           # align with the scores' axes
    index = tuple(b if a.shape[d] != 1 else (slice(None) if isinstance(b, slice) else 0)
                  for d, b in enumerate(blk))
    return a[index]


def _mask_scores(s, allowed, bias, bias_col):
    """The masked entries of the scores s set to −inf, in place. An additive `bias` covers the
    columns from bias_col on; the columns before it are allowed for every row."""
    if bias is not None:
        s[..., bias_col:] += bias                             # + 0 or −inf: faster than where=
    elif allowed is not None:
        np.copyto(s, -np.inf, where=~allowed)


def _softmax_rows(s, allowed, bias, bias_col=0, stats=None):
    """s ← softmax(s + mask) over the last axis, in place (the scores of one block). With
    stats = (row_max, inv_denom), (..., Tq, 1) arrays, each row's max and 1 / Σ exp are written
    there, which is all _recompute_rows needs to make the same P again from the same scores."""
    _mask_scores(s, allowed, bias, bias_col)
    row_max = np.maximum.reduce(s, axis=-1, keepdims=True, out=None if stats is None else stats[0])
    if allowed is not None:
        row_max[row_max == -np.inf] = 0.0                     # numerical care: empty row: exp(−inf − 0) = 0, not NaN
    s -= row_max                                              # numerical care: max-subtraction
    np.exp(s, out=s)
    denom = np.add.reduce(s, axis=-1, keepdims=True, out=None if stats is None else stats[1])
    if allowed is not None:
        denom[denom == 0] = 1.0                               # numerical care: empty row: P = 0/1 = 0
    s *= np.reciprocal(denom, out=denom)                      # one division per row, not per entry


def _recompute_rows(s, allowed, bias, bias_col, stats):
    """s (the scores, recomputed by the same matmul as forward's) ← the P forward made, in place,
    from the row statistics _softmax_rows kept: the same operations in the same order, so the
    same bits."""
    _mask_scores(s, allowed, bias, bias_col)
    s -= stats[0]
    np.exp(s, out=s)
    s *= stats[1]


def forward(q, k, v, causal=False, mask=None, dropout_p=0.0, rng=None, keep_probs=True):
    """y = softmax(q kᵀ / √d_k + mask) v. Returns (y, cache).

    With keep_probs=False the cache holds, instead of P, each query row's max score and
    1 / Σ exp: two numbers per row instead of Tk. Backward then recomputes P chunk by chunk from
    q and k (one more q kᵀ matmul and exp pass), bit for bit as forward made it (see
    _recompute_rows). For the small GPT of the benchmarks (6 layers, B 8, T 256) that is 45 MiB
    less to keep, for about 1 % more time per training step; the GPT runs this way."""
    _check_shapes(q, k, v)
    check_p(dropout_p, "attention")
    scale = 1.0 / math.sqrt(q.shape[-1])
    Tq, Tk = q.shape[-2], k.shape[-2]
    dtype = np.result_type(q, k, v)
    score_shape = (*q.shape[:-1], Tk)
    allowed = allowed_keys(score_shape, causal, mask)         # numerical care: −inf, never −1e4
    bias = _causal_bias(Tq, Tk, dtype) if causal and mask is None else None

    rows = _query_chunks(Tq, Tk, bias is not None)
    lead = score_shape[:-2]
    if allowed is None and dropout_p == 0.0 and 0 < Tk and math.prod(score_shape) <= _BLOCK:
        # every key visible, no dropout, scores small enough for one block (a KV-cached decoding
        # step, for one): the loop below in one go, without its bookkeeping
        p = [np.empty(score_shape, dtype=dtype)] if keep_probs else None
        stats = None if keep_probs else (np.empty((*lead, Tq, 1), dtype=dtype), np.empty((*lead, Tq, 1), dtype=dtype))
        s = np.matmul(q * scale, k.swapaxes(-1, -2), out=None if p is None else p[0])   # (..., Tq, Tk)
        _softmax_rows(s, None, None, 0, stats)                       # P = softmax(S), in place
        y = np.matmul(s, v)                                           # (..., Tq, d_v)
        return y, (q, k, v, p, None, p, scale, rows, None if stats is None else (stats, None, None))
    drop = None
    if dropout_p > 0.0:
        full = keep_mask(score_shape, dropout_p, rng).astype(dtype)   # M, in p's dtype
        full *= 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0  # M / (1 − p); p = 1 keeps nothing
        drop = [full[..., a:b, :e] for a, b, e in rows]
    if keep_probs:
        # P is kept chunk by chunk, each chunk only as wide as the keys its rows can see
        p = [np.empty((*lead, b - a, e), dtype=dtype) for a, b, e in rows]        # (..., b−a, e)
        p_used = p if drop is None else [np.empty_like(c) for c in p]
        stats = None
    else:
        p = p_used = None
        stats = (np.empty((*lead, Tq, 1), dtype=dtype), np.empty((*lead, Tq, 1), dtype=dtype))
    y = np.empty((*q.shape[:-1], v.shape[-1]), dtype=dtype)  # (..., Tq, d_v)
    nd = len(score_shape)
    for blk in _blocks(q.shape, Tk):
        yb, part = y[blk], _part(allowed, blk, nd)
        for c, (a, b, e) in enumerate(rows):   # query rows [a, b) against keys [0, e)
            if e == 0:
                yb[..., a:b, :] = 0.0              # these rows see no key at all
                if stats is not None:
                    stats[0][blk][..., a:b, :] = 0.0
                    stats[1][blk][..., a:b, :] = 1.0
                continue
            # S = (q / √d_k) kᵀ: the scale goes on q's b−a rows of d_k, not on S's rows of e
            s = np.matmul(q[blk][..., a:b, :] * scale, k[blk][..., :e, :].swapaxes(-1, -2),
                          out=None if p is None else p[c][blk])      # (block, ..., b−a, e)
            d = max(0, Tk - Tq + a)          # keys [0, d) are visible to every row of the chunk
            _softmax_rows(s, part[..., a:b, :e] if part is not None else None,
                          bias[a:b, d:e] if bias is not None else None, d,
                          None if stats is None else (stats[0][blk][..., a:b, :], stats[1][blk][..., a:b, :]))
            if drop is not None:                                        # P̃ = P ⊙ M / (1 − p)
                s = np.multiply(s, drop[c][blk], out=None if p is None else p_used[c][blk])
            np.matmul(s, v[blk][..., :e, :], out=yb[..., a:b, :])      # y = P̃ v
    return y, (q, k, v, p, drop, p_used, scale, rows,
               None if stats is None else (stats, allowed, bias))


def backward(dy, cache):
    """Returns (dq, dk, dv)."""
    q, k, v, p, drop, p_used, scale, rows, recompute = cache
    if dy.shape != (*q.shape[:-1], v.shape[-1]):
        raise ValueError(f"attention: dy has shape {dy.shape} but y had shape {(*q.shape[:-1], v.shape[-1])}")
    dtype = np.result_type(q, k, v, dy)
    Tq, Tk = q.shape[-2], k.shape[-2]
    if recompute is not None:
        stats, allowed, bias = recompute
    dq = np.empty(q.shape, dtype=dtype)
    whole = len(rows) == 1                  # one chunk: dk, dv written at once; else summed over chunks
    dk = (np.empty if whole else np.zeros)(k.shape, dtype=dtype)
    dv = (np.empty if whole else np.zeros)(v.shape, dtype=dtype)
    for blk in _blocks(q.shape, Tk):
        if recompute is not None:
            part = _part(allowed, blk, q.ndim)
        for c, (a, b, e) in enumerate(rows):   # query rows [a, b) against keys [0, e)
            if e == 0:
                dq[blk][..., a:b, :] = 0.0
                continue
            dyb, qb, kb, vb = dy[blk][..., a:b, :], q[blk][..., a:b, :], k[blk][..., :e, :], v[blk][..., :e, :]
            if recompute is None:
                pb, ub = p[c][blk], p_used[c][blk]
            else:                                             # P again, as forward made it
                d = max(0, Tk - Tq + a)
                qs = qb * scale
                pb = np.matmul(qs, kb.swapaxes(-1, -2))
                _recompute_rows(pb, part[..., a:b, :e] if part is not None else None,
                                bias[a:b, d:e] if bias is not None else None, d,
                                (stats[0][blk][..., a:b, :], stats[1][blk][..., a:b, :]))
                ub = pb if drop is None else pb * drop[c][blk]
            dp = dyb @ vb.swapaxes(-1, -2)                    # dP̃ (block, ..., b−a, e)
            if whole:
                np.matmul(ub.swapaxes(-1, -2), dyb, out=dv[blk])       # dv = P̃ᵀ dy
            else:
                dv[blk][..., :e, :] += ub.swapaxes(-1, -2) @ dyb        # dv = Σ_chunks P̃ᵀ dy
            if drop is not None:
                dp *= drop[c][blk]                            # dP = dP̃ ⊙ M / (1 − p)
            ds = dp * pb                                      # term 1: P ⊙ dP
            row = np.add.reduce(ds, axis=-1, keepdims=True)   # (..., b−a, 1) Σ_l dP_il P_il
            ds -= np.multiply(pb, row, out=dp)                # term 2 (dP's buffer reused)
            dqb = np.matmul(ds, kb, out=dq[blk][..., a:b, :])
            dqb *= scale                                      # dq = dS k / √d_k
            qb = qs if recompute is not None else qb * scale  # (the scale on q's side, as in forward)
            if whole:
                np.matmul(ds.swapaxes(-1, -2), qb, out=dk[blk])        # dk = dSᵀ q / √d_k
            else:
                dk[blk][..., :e, :] += ds.swapaxes(-1, -2) @ qb         # dk = Σ_chunks dSᵀ q / √d_k
    return dq, dk, dv
