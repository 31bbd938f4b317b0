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
  default 64, or an eighth of them for T > 512: default_qrows); rows [start, stop) can see no
  key beyond Tk − Tq + stop − 1, so their scores are computed against those keys only, and the
  masked upper triangle is neither multiplied nor exponentiated (`query_chunks`; the causal
  mask is a cached 0 / −inf bias added on each chunk's diagonal part only).
- keep_probs=False. The cache holds each query row's max score and 1/Σexp instead of P; backward
  recomputes the scores with the same product and repeats forward's softmax operations on them,
  so P comes back bit for bit.
- The softmax by numba's kernels where numformer.ops.fast.dispatch chooses them (float32), when
  there is no dropout and the mask is causal, absent, or key padding (a run of real keys, then
  padding, per sequence: the encoder's); NumPy's otherwise (`Masking`).

Forward and backward are one loop each: over score blocks, and within each over query chunks.
One chunk's forward is `_attend`; where there is one block of one chunk (a KV-cached decoding
step, say) forward calls it once on the whole arrays, without the loop's cutting.

Backward follows the reference's term-by-term derivation chunk by chunk; each key's dk and dv
are summed over the chunks that see it. S is computed as (q / √d_k) kᵀ and dk as dSᵀ (q / √d_k),
so the scale multiplies arrays of T·d_k entries instead of T·T. A query row with no allowed key
outputs zeros and passes zero gradient, as in the reference. Key and value heads shared by
several query heads (grouped-query attention: k, v with a size-1 axis that q's broadcast along)
are cut into the same blocks as q, and their dk and dv summed over each group (`sum_to`).
"""

import math
from typing import NamedTuple

import numpy as np

from numformer.ops.attention import Cache, allowed_keys, check_shapes, sum_to
from numformer.ops.dropout import check_p, keep_mask
from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA

# Default sizes: score blocks of at most BLOCK elements (512 KiB of float32, about an L2 cache),
# causal query chunks of QROWS rows, or of an eighth of the rows when that is more (T 1024: 128):
# a long sequence then makes 8 chunks' Python and BLAS calls instead of T/64, for an eighth more
# score work on the diagonal, which measured faster (docs/performance.md). Every block and chunk
# computes exactly what the whole array would; only the memory traffic and the number of calls
# change.
BLOCK = 1 << 17
QROWS = 64
QCHUNKS = 8


class Chunk(NamedTuple):
    """Query rows [start, stop), which see at most the keys [0, keys)."""

    start: int
    stop: int
    keys: int


def default_qrows(Tq):
    """The causal query chunk's rows when forward is not given `qrows`: max(QROWS, Tq // QCHUNKS)."""
    return max(QROWS, Tq // QCHUNKS)


_WHOLE = ((slice(None),),)      # one block of everything


def score_blocks(q_shape, Tk, block=BLOCK):
    """Index tuples that cover the leading dimensions in blocks of about `block` score elements:
    slices along axis 0, or, when one item of axis 0 is already larger, single items of axis 0
    with slices along axis 1 (e.g. a few heads of one sequence). One block when q has no
    leading dimensions."""
    if len(q_shape) < 3:
        return _WHOLE
    per_item = math.prod(q_shape[1:-1]) * Tk
    if q_shape[0] * per_item <= block:
        return _WHOLE
    if per_item <= block or len(q_shape) < 4:
        step = max(1, block // max(per_item, 1))
        return [(slice(i, i + step),) for i in range(0, q_shape[0], step)]
    per_head = math.prod(q_shape[2:-1]) * Tk
    step = max(1, block // max(per_head, 1))
    return [(i, slice(j, j + step)) for i in range(q_shape[0]) for j in range(0, q_shape[1], step)]


def query_chunks(Tq, Tk, causal, qrows=None):
    """The Chunks of the query rows, `qrows` rows each (default: default_qrows(Tq)), each against
    the keys its last row can see. Without a causal mask, or for fewer than two chunks' worth of
    rows, one chunk of every row and every key. (For T = 256 and chunks of 64, 62.5 % of the
    score work remains.)"""
    qrows = default_qrows(Tq) if qrows is None else qrows
    if not causal or Tq < 2 * qrows:
        return [Chunk(0, Tq, Tk)]
    return [Chunk(start, min(start + qrows, Tq), min(Tk, max(0, Tk - Tq + min(start + qrows, Tq))))
            for start in range(0, Tq, qrows)]


# ----------------------------------------------------------------------------- masking

class Masking(NamedTuple):
    """Which keys each query may see, in the forms the softmax takes them."""

    allowed: object         # boolean, broadcastable to the scores, True = may see; None: every
                            # key, or the causal mask alone, which causal_bias holds
    causal_bias: object     # (Tq, Tk) 0 / −inf for a causal mask alone (added on each chunk's
                            # diagonal part); None otherwise
    key_counts: object      # the compiled softmax's keys per item of the leading dims (an int when
                            # all see the same); None: NumPy's softmax runs


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


def masking(q, k, v, causal, mask, dropout_p=0.0):
    """The Masking of attention(q, k, v, causal, mask, dropout_p). The compiled softmax takes
    it (key_counts) where dispatch chooses numba for q, k, v (float32), there is no dropout, and
    the mask is causal, absent, or key padding without the causal one: per item of the leading
    dimensions a run of real keys, then padding (the encoder's)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    lead = q.shape[:-2]
    if mask is None:
        bias = _causal_bias(Tq, Tk, np.result_type(q, k, v)) if causal else None
        return Masking(None, bias, _key_counts(q, k, v, lead, Tk, causal, mask, dropout_p))
    allowed = allowed_keys((*lead, Tq, Tk), causal, mask)      # checks the mask; numerical care: −inf, never −1e4
    return Masking(allowed, None, _key_counts(q, k, v, lead, Tk, causal, mask, dropout_p))


def _key_counts(q, k, v, lead, Tk, causal, mask, dropout_p):
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


def _part(a, items, ndim):
    """The block `items` of an array broadcast against the scores (ndim dims): each leading axis
    the array has in full is indexed like the scores, each it broadcasts along is kept."""
    if a is None:
        return a
    a = a.reshape((1,) * (ndim - a.ndim) + a.shape)           # align with the scores' axes
    index = tuple(i if a.shape[d] != 1 else (slice(None) if isinstance(i, slice) else 0)
                  for d, i in enumerate(items))
    return a[index]


def _block_masking(m, items, ndim):
    """The Masking of the score block `items`."""
    if m.allowed is None and not isinstance(m.key_counts, np.ndarray):
        return m                      # nothing to cut
    counts = m.key_counts
    if isinstance(counts, np.ndarray) and counts.ndim:
        counts = counts[items]
    return Masking(_part(m.allowed, items, ndim), m.causal_bias, counts)


# ----------------------------------------------------------------------------- the softmax of one chunk

def _softmax(s, m, chunk, offset, stats=None):
    """s ← softmax(s + mask) in place: the scores (..., rows, keys) of one chunk of one block, m
    its Masking, offset = Tk − Tq (query row i sits at position offset + i). With stats =
    (row_max, inv_sum), (..., rows, 1) arrays, each row's max and 1 / Σ exp are written there,
    which is all _softmax_again needs to make the same P again."""
    if m.key_counts is not None:
        rows, keys = s.shape[-2:]
        if stats is None:
            stats = (np.empty((*s.shape[:-1], 1), s.dtype), np.empty((*s.shape[:-1], 1), s.dtype))
        dispatch.kernels().softmax_rows(_rows_view(s, rows, keys), _first_row_keys(m, chunk, offset),
                                        _group_counts(m.key_counts, s.shape[:-2]),
                                        _stats_view(stats[0], rows), _stats_view(stats[1], rows))
        return
    masked = m.allowed is not None or m.causal_bias is not None
    _mask_scores(s, m, chunk, offset)
    row_max = np.maximum.reduce(s, axis=-1, keepdims=True, out=None if stats is None else stats[0])
    if masked:
        row_max[row_max == -np.inf] = 0.0                     # numerical care: empty row: exp(−inf − 0) = 0, not NaN
    s -= row_max                                              # numerical care: max-subtraction
    np.exp(s, out=s)
    denom = np.empty((*s.shape[:-1], 1), dtype=s.dtype) if stats is None else stats[1]
    np.vecdot(s, np.ones(s.shape[-1], dtype=s.dtype), out=denom[..., 0])   # Σ exp: a BLAS dot
    if masked:
        denom[denom == 0] = 1.0                               # numerical care: empty row: P = 0/1 = 0
    s *= np.reciprocal(denom, out=denom)                      # one division per row, not per entry


def _softmax_again(s, m, chunk, offset, stats):
    """s (the scores, recomputed by the same product as forward's) ← the P forward made, in
    place, from the row statistics _softmax kept: the same operations in the same order, so
    the same bits."""
    if m.key_counts is not None:
        rows, keys = s.shape[-2:]
        dispatch.kernels().softmax_again(_rows_view(s, rows, keys), _first_row_keys(m, chunk, offset),
                                         _group_counts(m.key_counts, s.shape[:-2]),
                                         _stats_view(stats[0], rows), _stats_view(stats[1], rows))
        return
    _mask_scores(s, m, chunk, offset)
    s -= stats[0]
    np.exp(s, out=s)
    s *= stats[1]


def _first_row_keys(m, chunk, offset):
    """For the kernels: the keys the chunk's first row sees (row i sees min(that + i, keys,
    key count) of them): up to its own position under the causal mask, else all."""
    return offset + chunk.start + 1 if m.causal_bias is not None else chunk.keys


def _mask_scores(s, m, chunk, offset):
    """The masked entries of one chunk's scores s set to −inf, in place. The causal bias is added
    from the first key that not every row of the chunk sees (offset + start) on."""
    if m.causal_bias is not None:
        seen_by_all = max(0, offset + chunk.start)
        s[..., seen_by_all:] += m.causal_bias[chunk.start:chunk.stop, seen_by_all:chunk.keys]   # + 0 or −inf: faster than where=
    elif m.allowed is not None:
        np.copyto(s, -np.inf, where=~m.allowed[..., chunk.start:chunk.stop, :chunk.keys])


_ONE_COUNT = {}


def _group_counts(counts, lead):
    """The kernels' per-group key counts: (G,) int64 for the groups of the leading dims `lead`,
    or a cached one-element array when every group has the same count (counts an int)."""
    if isinstance(counts, np.ndarray):
        return np.ascontiguousarray(np.broadcast_to(counts, lead), dtype=np.int64).reshape(-1)
    one = _ONE_COUNT.get(counts)
    if one is None:
        one = _ONE_COUNT[counts] = np.array([counts], dtype=np.int64)
        one.setflags(write=False)
    return one


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


# ----------------------------------------------------------------------------- forward, backward

def _attend(q, k, v, y, m, chunk, offset, scale, probs=None, drop=None, stats=None):
    """y ← P̃ v, P = softmax(q kᵀ / √d_k + mask), for one chunk of query rows of one score block:
    q (..., rows, d_k), k and v (..., keys, ·) the keys those rows see, y (..., rows, d_v) written
    in place; m the block's Masking, offset = Tk − Tq. P is made in probs when given
    (keep_probs), each row's max and 1 / Σ exp go to stats when given; drop is the chunk's
    M / (1 − p)."""
    # S = (q / √d_k) kᵀ: the scale goes on q's rows of d_k, not on S's rows of keys
    s = np.matmul(q * scale, k.swapaxes(-1, -2), out=probs)              # (..., rows, keys)
    _softmax(s, m, chunk, offset, stats)
    if drop is not None:
        s = s * drop                                                     # P̃ = P ⊙ M / (1 − p)
    np.matmul(s, v, out=y)                                               # y = P̃ v


def forward(q, k, v, causal=False, mask=None, dropout_p=0.0, rng=None, keep_probs=True,
            block=BLOCK, qrows=None):
    """y = softmax(q kᵀ / √d_k + mask) v. Returns (y, cache).

    With keep_probs=False the cache holds, instead of P, each query row's max score and
    1 / Σ exp: two numbers per row instead of Tk. Backward then recomputes P chunk by chunk from
    q and k (one more q kᵀ product and exp pass), bit for bit as forward made it (see
    _softmax_again). `block` and `qrows` set the sizes of score blocks and causal query chunks
    (see score_blocks and query_chunks); the cache remembers them for backward."""
    check_shapes(q, k, v)
    check_p(dropout_p, "attention")
    scale = 1.0 / math.sqrt(q.shape[-1])
    Tq, Tk = q.shape[-2], k.shape[-2]
    lead = q.shape[:-2]
    dtype = np.result_type(q, k, v)
    m = masking(q, k, v, causal, mask, dropout_p)
    chunks = query_chunks(Tq, Tk, m.causal_bias is not None, qrows)
    drop = None                                               # M / (1 − p) by chunk, in P's dtype
    if dropout_p > 0.0:
        full = keep_mask((*lead, Tq, Tk), dropout_p, rng).astype(dtype)
        full *= 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0   # p = 1 keeps nothing
        drop = [full[..., c.start:c.stop, :c.keys] for c in chunks]
    # P is kept chunk by chunk, each chunk only as wide as the keys its rows can see; or instead
    # each row's max score and 1 / Σ exp
    probs = [np.empty((*lead, c.stop - c.start, c.keys), dtype) for c in chunks] if keep_probs else None
    stats = None if keep_probs else (np.empty((*lead, Tq, 1), dtype), np.empty((*lead, Tq, 1), dtype))
    y = np.empty((*lead, Tq, v.shape[-1]), dtype)             # (..., Tq, d_v)
    cache = Cache(q, k, v, causal, mask, probs, drop, stats, block, qrows, m if probs is None else None)
    blocks = score_blocks(q.shape, Tk, block)
    if len(blocks) == 1 and len(chunks) == 1 and Tk > 0:      # one pass (a KV-cached decoding step):
        _attend(q, k, v, y, m, chunks[0], Tk - Tq, scale,     # nothing to cut
                None if probs is None else probs[0], None if drop is None else drop[0], stats)
        return y, cache
    for items in blocks:                                      # a few batch items (or heads) at a time
        q_b, y_b = q[items], y[items]
        k_b, v_b = _part(k, items, q.ndim), _part(v, items, q.ndim)   # shared heads: broadcast along q's
        stats_b = None if stats is None else (stats[0][items], stats[1][items])
        masking_b = _block_masking(m, items, q.ndim)
        for i, chunk in enumerate(chunks):
            rows, keys = slice(chunk.start, chunk.stop), chunk.keys
            chunk_stats = None if stats_b is None else (stats_b[0][..., rows, :], stats_b[1][..., rows, :])
            if keys == 0:                                     # these rows see no key at all
                y_b[..., rows, :] = 0.0
                if chunk_stats is not None:
                    chunk_stats[0][...] = 0.0
                    chunk_stats[1][...] = 1.0
                continue
            _attend(q_b[..., rows, :], k_b[..., :keys, :], v_b[..., :keys, :], y_b[..., rows, :], masking_b,
                    chunk, Tk - Tq, scale, None if probs is None else probs[i][items],
                    None if drop is None else drop[i][items], chunk_stats)
    return y, cache


def backward(dy, cache):
    """Returns (dq, dk, dv)."""
    q, k, v, probs, drop, stats = cache.q, cache.k, cache.v, cache.probs, cache.dropout, cache.row_stats
    if dy.shape != (*q.shape[:-1], v.shape[-1]):
        raise ValueError(f"attention: dy has shape {dy.shape} but y had shape {(*q.shape[:-1], v.shape[-1])}")
    scale = 1.0 / math.sqrt(q.shape[-1])
    Tq, Tk = q.shape[-2], k.shape[-2]
    dtype = np.result_type(q, k, v, dy)
    m = cache.masking or Masking(None, None, None)           # forward's, where P is made again
    chunks = query_chunks(Tq, Tk, cache.causal and cache.mask is None, cache.qrows)
    kernel = dispatch.runs("attention", q, k, v, dy) == NUMBA
    shared = k.shape[:-2] != q.shape[:-2]       # key/value heads shared by several query heads
    one_chunk = len(chunks) == 1 and not shared  # dk, dv written at once; else summed over the chunks
    dq = np.empty(q.shape, dtype=dtype)
    dk = (np.empty if one_chunk else np.zeros)(k.shape, dtype=dtype)
    dv = (np.empty if one_chunk else np.zeros)(v.shape, dtype=dtype)
    for items in score_blocks(q.shape, Tk, cache.block):
        q_b, dy_b, dq_b = q[items], dy[items], dq[items]
        k_b, v_b, dk_b, dv_b = (_part(a, items, q.ndim) for a in (k, v, dk, dv))   # views: += writes through
        masking_b = _block_masking(m, items, q.ndim)
        for i, chunk in enumerate(chunks):
            rows, keys = slice(chunk.start, chunk.stop), chunk.keys
            if keys == 0:
                dq_b[..., rows, :] = 0.0
                continue
            dy_c, k_c, v_c = dy_b[..., rows, :], k_b[..., :keys, :], v_b[..., :keys, :]
            q_c = q_b[..., rows, :] * scale                   # the scale on q's side, as in forward
            if probs is None:                                 # P again, as forward made it
                p = np.matmul(q_c, k_c.swapaxes(-1, -2))
                _softmax_again(p, masking_b, chunk, Tk - Tq, (stats[0][items][..., rows, :], stats[1][items][..., rows, :]))
            else:
                p = probs[i][items]
            p_used = p if drop is None else p * drop[i][items]   # P̃
            dp = dy_c @ v_c.swapaxes(-1, -2)                  # dP̃ (..., rows, keys)
            if one_chunk:
                np.matmul(p_used.swapaxes(-1, -2), dy_c, out=dv_b)           # dv = P̃ᵀ dy
            else:
                dv_b[..., :keys, :] += sum_to(p_used.swapaxes(-1, -2) @ dy_c, dv_b.shape)   # dv = Σ_chunks Σ_group P̃ᵀ dy
            if drop is not None:
                dp *= drop[i][items]                          # dP = dP̃ ⊙ M / (1 − p)
            if kernel and p.flags.c_contiguous:               # the three lines below, in one compiled pass
                dispatch.kernels().softmax_backward_rows(_rows_view(p, chunk.stop - chunk.start, keys),
                                                         _rows_view(dp, chunk.stop - chunk.start, keys))
                ds = dp
            else:
                row = np.vecdot(dp, p)[..., None]             # (..., rows, 1) Σ_l dP_il P_il: a BLAS dot
                dp -= row
                ds = np.multiply(dp, p, out=dp)               # P ⊙ dP − P Σ_l dP_il P_il (terms 1, 2)
            dq_c = np.matmul(ds, k_c, out=dq_b[..., rows, :])
            dq_c *= scale                                     # dq = dS k / √d_k
            if one_chunk:
                np.matmul(ds.swapaxes(-1, -2), q_c, out=dk_b)                # dk = dSᵀ q / √d_k
            else:
                dk_b[..., :keys, :] += sum_to(ds.swapaxes(-1, -2) @ q_c, dk_b.shape)        # dk = Σ_chunks Σ_group dSᵀ q / √d_k
    return dq, dk, dv
