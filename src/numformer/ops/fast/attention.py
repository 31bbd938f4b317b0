"""Scaled dot-product attention, the fast version: the same formula, signature and cache
contract as numformer.ops.attention (read that module for the math), computed in blocks and
chunks.

    y, cache = attention.forward(q, k, v, causal=False, mask=None, dropout_p=0.0, rng=None)
    dq, dk, dv = attention.backward(dy, cache)

What this module adds to the reference, none of which changes the formula:

- Blocks. The scores of a long sequence are large ((B, nh, T, T) = 12.6 MB for B 8, nh 6, T 256)
  and softmax and its backward pass over them several times. The leading dimensions are taken
  a few batch items (or heads) at a time, at most `block` score elements each, so that a block
  stays in the CPU cache between passes (`score_blocks`).
- Causal query chunks. With a causal mask the query rows are taken `qrows` at a time (by
  default 64, or an eighth of them for T > 512: default_qrows); rows
  [a, b) can see no key beyond Tk − Tq + b − 1, so their scores are computed against those keys
  only, and the masked upper triangle is neither multiplied nor exponentiated (`query_chunks`;
  the causal mask is a cached 0 / −inf bias added on each chunk's diagonal part only).
- keep_probs=False. The cache holds each query row's max score and 1/Σexp instead of P; backward
  recomputes the scores with the same product and repeats forward's softmax operations on them,
  so P comes back bit for bit.
- One pass without bookkeeping when every key is visible and the scores fit one block (a
  KV-cached decoding step).

Backward follows the reference's term-by-term derivation chunk by chunk; each key's dk and dv
are summed over the chunks that see it. S is computed as (q / √d_k) kᵀ and dk as dSᵀ (q / √d_k),
so the scale multiplies arrays of T·d_k entries instead of T·T. A query row with no allowed key
outputs zeros and passes zero gradient, as in the reference.
"""

import math

import numpy as np

from numformer.ops.attention import allowed_keys, check_shapes
from numformer.ops.dropout import check_p, keep_mask
from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA


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


# Default sizes: score blocks of at most BLOCK elements (512 KiB of float32, about an L2 cache),
# causal query chunks of QROWS rows, or of an eighth of the rows when that is more (T 1024: 128):
# a long sequence then makes 8 chunks' Python and BLAS calls instead of T/64, for an eighth more
# score work on the diagonal (measured at T 1024, 4 heads of 64, forward + backward, one
# thread on a Xeon: 59.4 ms with 64-row chunks, 53.9 with 128). Every block and chunk computes
# exactly what the whole array would; only the memory traffic and the number of calls change.
BLOCK = 1 << 17
QROWS = 64
QCHUNKS = 8


def default_qrows(Tq):
    """The causal query chunk's rows when forward is not given `qrows`: max(QROWS, Tq // QCHUNKS)."""
    return max(QROWS, Tq // QCHUNKS)


def score_blocks(q_shape, Tk, block=BLOCK):
    """Index tuples that cover the leading dimensions in blocks of about `block` score elements:
    slices along axis 0, or, when one item of axis 0 is already larger, single items of axis 0
    with slices along axis 1 (e.g. a few heads of one sequence). One block when q has no
    leading dimensions."""
    if len(q_shape) < 3:
        return [(slice(None),)]
    per_item = math.prod(q_shape[1:-1]) * Tk
    if per_item <= block or len(q_shape) < 4:
        step = max(1, block // max(per_item, 1))
        return [(slice(i, i + step),) for i in range(0, q_shape[0], step)]
    per_sub = math.prod(q_shape[2:-1]) * Tk
    step = max(1, block // max(per_sub, 1))
    return [(i, slice(j, j + step)) for i in range(q_shape[0]) for j in range(0, q_shape[1], step)]


def query_chunks(Tq, Tk, causal, qrows=None):
    """(a, b, e) triples: query rows [a, b) see at most the keys [0, e), in chunks of `qrows`
    rows (default: default_qrows(Tq)). Without a causal mask, or for fewer than two chunks'
    worth of rows, one chunk of every row and every key. (For T = 256 and chunks of 64, 62.5 %
    of the score work remains.)"""
    qrows = default_qrows(Tq) if qrows is None else qrows
    if not causal or Tq < 2 * qrows:
        return [(0, Tq, Tk)]
    return [(a, min(a + qrows, Tq), min(Tk, max(0, Tk - Tq + min(a + qrows, Tq))))
            for a in range(0, Tq, qrows)]


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
    denom = np.empty((*s.shape[:-1], 1), dtype=s.dtype) if stats is None else stats[1]
    np.vecdot(s, np.ones(s.shape[-1], dtype=s.dtype), out=denom[..., 0])   # Σ exp: a BLAS dot
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


_ONE_LIMIT = {}


def _group_limits(limits, lead):
    """The kernels' per-group key counts: (G,) int64 for the groups of the leading dims `lead`,
    or a cached one-element array when every group has the same count (limits an int)."""
    if isinstance(limits, np.ndarray):
        return np.ascontiguousarray(np.broadcast_to(limits, lead), dtype=np.int64).reshape(-1)
    one = _ONE_LIMIT.get(limits)
    if one is None:
        one = _ONE_LIMIT[limits] = np.array([limits], dtype=np.int64)
        one.setflags(write=False)
    return one


def _softmax_kernel(s, first, limits, stats):
    """_softmax_rows by the compiled kernel: s (..., rows, e) ← P in place, where row i sees the
    keys [0, min(e, first + i, limits[...]))."""
    rows, e = s.shape[-2:]
    if stats is None:
        stats = (np.empty((*s.shape[:-1], 1), s.dtype), np.empty((*s.shape[:-1], 1), s.dtype))
    dispatch.kernels().softmax_rows(_rows_view(s, rows, e), first, _group_limits(limits, s.shape[:-2]),
                               _stats_view(stats[0], rows), _stats_view(stats[1], rows))


def _kernel_limits(q, k, v, lead, Tk, causal, mask, dropout_p):
    """With numba (float32, no dropout): the number of keys each item of the leading dimensions
    sees, an int64 array of shape `lead` (or the int Tk without a mask), for the compiled
    softmax kernels; None where the NumPy code runs instead: no numba, float64, dropout, or a
    mask that is not a run of real keys followed by padding (the encoder's key mask is one),
    or such a mask together with the causal one."""
    if not (dropout_p == 0.0 and dispatch.runs("attention", q, k, v) == NUMBA):
        return None
    if mask is None:
        return Tk                     # the same for every item
    if causal:
        return None
    m = np.asarray(mask)
    if m.ndim < 2 or m.shape[-2] != 1 or m.dtype != np.bool_:
        return None
    m = np.broadcast_to(m, (*lead, 1, Tk))[..., 0, :]
    n = m.sum(axis=-1)
    if not np.array_equal(m, np.arange(Tk) < n[..., None]):
        return None
    return np.ascontiguousarray(n, dtype=np.int64)


def _part_limits(limits, blk):
    """The key counts of the block `blk` (limits is an int or, with leading dimensions, an array)."""
    return limits[blk] if isinstance(limits, np.ndarray) and limits.ndim else limits


def _rows_view(a, rows, cols):
    """a (..., rows, cols) as a (G, rows, cols) view of the same memory (writes go through)."""
    v = a.view()
    v.shape = (-1, rows, cols)        # raises instead of copying when no view is possible
    return v


def _stats_view(a, rows):
    """A block's row statistics (..., rows, 1) as a (G, rows) view."""
    v = a[..., 0].view()
    v.shape = (-1, rows)
    return v


def forward(q, k, v, causal=False, mask=None, dropout_p=0.0, rng=None, keep_probs=True,
            block=BLOCK, qrows=None):
    """y = softmax(q kᵀ / √d_k + mask) v. Returns (y, cache).

    With keep_probs=False the cache holds, instead of P, each query row's max score and
    1 / Σ exp: two numbers per row instead of Tk. Backward then recomputes P chunk by chunk from
    q and k (one more q kᵀ matmul and exp pass), bit for bit as forward made it (see
    _recompute_rows). `block` and `qrows` set the sizes of score blocks and causal query chunks
    (see score_blocks and query_chunks); the cache remembers them for backward."""
    check_shapes(q, k, v)
    check_p(dropout_p, "attention")
    scale = 1.0 / math.sqrt(q.shape[-1])
    Tq, Tk = q.shape[-2], k.shape[-2]
    dtype = np.result_type(q, k, v)
    score_shape = (*q.shape[:-1], Tk)
    allowed = allowed_keys(score_shape, causal, mask)         # numerical care: −inf, never −1e4
    bias = _causal_bias(Tq, Tk, dtype) if causal and mask is None else None

    rows = query_chunks(Tq, Tk, bias is not None, qrows)
    lead = score_shape[:-2]
    limits = _kernel_limits(q, k, v, lead, Tk, causal, mask, dropout_p)
    if allowed is None and dropout_p == 0.0 and 0 < Tk and math.prod(score_shape) <= block:
        # every key visible, no dropout, scores small enough for one block (a KV-cached decoding
        # step, for one): the loop below in one go, without its bookkeeping
        p = [np.empty(score_shape, dtype=dtype)] if keep_probs else None
        stats = None if keep_probs else (np.empty((*lead, Tq, 1), dtype=dtype), np.empty((*lead, Tq, 1), dtype=dtype))
        s = np.matmul(q * scale, k.swapaxes(-1, -2), out=None if p is None else p[0])   # (..., Tq, Tk)
        if limits is not None:                                        # P = softmax(S), in place
            _softmax_kernel(s, Tk, limits, stats)
        else:
            _softmax_rows(s, None, None, 0, stats)
        y = np.matmul(s, v)                                           # (..., Tq, d_v)
        return y, (q, k, v, p, None, p, scale, rows, block,
                   None if stats is None else (stats, None, None, limits))
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
    for blk in score_blocks(q.shape, Tk, block):
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
            chunk_stats = None if stats is None else (stats[0][blk][..., a:b, :], stats[1][blk][..., a:b, :])
            if limits is not None:
                _softmax_kernel(s, Tk - Tq + a + 1 if bias is not None else e, _part_limits(limits, blk), chunk_stats)
            else:
                _softmax_rows(s, part[..., a:b, :e] if part is not None else None,
                              bias[a:b, d:e] if bias is not None else None, d, chunk_stats)
            if drop is not None:                                        # P̃ = P ⊙ M / (1 − p)
                s = np.multiply(s, drop[c][blk], out=None if p is None else p_used[c][blk])
            np.matmul(s, v[blk][..., :e, :], out=yb[..., a:b, :])      # y = P̃ v
    return y, (q, k, v, p, drop, p_used, scale, rows, block,
               None if stats is None else (stats, allowed, bias, limits))


def backward(dy, cache):
    """Returns (dq, dk, dv)."""
    q, k, v, p, drop, p_used, scale, rows, block, recompute = cache
    if dy.shape != (*q.shape[:-1], v.shape[-1]):
        raise ValueError(f"attention: dy has shape {dy.shape} but y had shape {(*q.shape[:-1], v.shape[-1])}")
    dtype = np.result_type(q, k, v, dy)
    Tq, Tk = q.shape[-2], k.shape[-2]
    limits = None
    if recompute is not None:
        stats, allowed, bias, limits = recompute
    kernel = dispatch.runs("attention", q, k, v, dy) == NUMBA
    dq = np.empty(q.shape, dtype=dtype)
    whole = len(rows) == 1                  # one chunk: dk, dv written at once; else summed over chunks
    dk = (np.empty if whole else np.zeros)(k.shape, dtype=dtype)
    dv = (np.empty if whole else np.zeros)(v.shape, dtype=dtype)
    for blk in score_blocks(q.shape, Tk, block):
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
                chunk_stats = (stats[0][blk][..., a:b, :], stats[1][blk][..., a:b, :])
                if limits is not None:
                    dispatch.kernels().softmax_again(_rows_view(pb, b - a, e), Tk - Tq + a + 1 if bias is not None else e,
                                                _group_limits(_part_limits(limits, blk), pb.shape[:-2]),
                                                _stats_view(chunk_stats[0], b - a), _stats_view(chunk_stats[1], b - a))
                else:
                    _recompute_rows(pb, part[..., a:b, :e] if part is not None else None,
                                    bias[a:b, d:e] if bias is not None else None, d, chunk_stats)
                ub = pb if drop is None else pb * drop[c][blk]
            dp = dyb @ vb.swapaxes(-1, -2)                    # dP̃ (block, ..., b−a, e)
            if whole:
                np.matmul(ub.swapaxes(-1, -2), dyb, out=dv[blk])       # dv = P̃ᵀ dy
            else:
                dv[blk][..., :e, :] += ub.swapaxes(-1, -2) @ dyb        # dv = Σ_chunks P̃ᵀ dy
            if drop is not None:
                dp *= drop[c][blk]                            # dP = dP̃ ⊙ M / (1 − p)
            if kernel and pb.flags.c_contiguous:              # the three lines below, in one compiled pass
                dispatch.kernels().softmax_backward_rows(_rows_view(pb, b - a, e), _rows_view(dp, b - a, e))
                ds = dp
            else:
                row = np.vecdot(dp, pb)[..., None]            # (..., b−a, 1) Σ_l dP_il P_il: a BLAS dot
                dp -= row
                ds = np.multiply(dp, pb, out=dp)              # P ⊙ dP − P Σ_l dP_il P_il (terms 1, 2)
            dqb = np.matmul(ds, kb, out=dq[blk][..., a:b, :])
            dqb *= scale                                      # dq = dS k / √d_k
            qb = qs if recompute is not None else qb * scale  # (the scale on q's side, as in forward)
            if whole:
                np.matmul(ds.swapaxes(-1, -2), qb, out=dk[blk])        # dk = dSᵀ q / √d_k
            else:
                dk[blk][..., :e, :] += ds.swapaxes(-1, -2) @ qb         # dk = Σ_chunks dSᵀ q / √d_k
    return dq, dk, dv
