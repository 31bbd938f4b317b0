"""Token embedding: a table lookup, y = table[ids].

Forward
    y[..., :] = table[ids[...], :]
    ids (...) integers in [0, V)   table (V, C)   y (..., C)

Backward (dy = ∂L/∂y). The lookup is a one-hot product y = onehot(ids) @ table, so
    dtable = onehot(ids)ᵀ @ dy,  i.e.  dtable[v] = Σ_{positions n with ids[n] = v} dy[n]
A token that appears several times accumulates one gradient per appearance (`dtable[ids] += dy`
would keep only one of them). The sum is done by sorting the positions by id and adding each
run of equal ids with np.add.reduceat: the same sums as np.add.at, several times faster
(docs/performance.md). ids get no gradient.

A quantized table (inference, ops/quant.py) gives y = deq(table)[ids]: only the rows looked up
are dequantized.
"""

import numpy as np

from numformer.ops import quant


def forward(ids, table):
    """y = table[ids]. Returns (y, cache)."""
    ids = np.asarray(ids)
    if table.ndim != 2:
        raise ValueError(f"embedding: table has shape {table.shape}, expected (V, C)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    V = table.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"embedding: ids must lie in [0, {V}) for a table of shape {table.shape}, "
                         f"got values from {ids.min()} to {ids.max()}")
    y = quant.rows(table, ids) if quant.is_quantized(table) else table[ids]   # (..., C)
    return y, (ids, table.shape, table.dtype)


def backward(dy, cache):
    """Returns dtable."""
    ids, table_shape, dtype = cache
    C = table_shape[1]
    if dy.shape != (*ids.shape, C):
        raise ValueError(f"embedding: dy has shape {dy.shape} but y had shape {(*ids.shape, C)}")
    dtable = np.zeros(table_shape, dtype=np.result_type(dtype, dy))   # (V, C), promoted like linear's
    flat = ids.reshape(-1)                            # (N,)
    if flat.size == 0:
        return dtable
    order = np.argsort(flat, kind="stable")           # positions grouped by id
    sorted_ids = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])   # first position of each id
    dtable[sorted_ids[starts]] = np.add.reduceat(dy.reshape(-1, C)[order], starts, axis=0)  # repeats accumulate
    return dtable
