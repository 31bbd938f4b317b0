"""Sinusoidal positional encoding (the article's formula 2).

    PE(pos, 2i)   = sin(pos / 10000^(2i/C))
    PE(pos, 2i+1) = cos(pos / 10000^(2i/C))
    pos = 0 .. T−1, column j = 0 .. C−1 (i = j // 2); result (T, C)

For odd C the last column is a sine (column C−1 = 2i with i = (C−1)/2) with no cosine partner.

Backward: none. The table is a constant with no parameter in it; the model adds it to the token
embeddings, x0 = wte[idx] + PE, and the gradient of that sum flows to the embeddings only:
    ∂L/∂wte[idx] = ∂L/∂x0            (the sum passes dy through unchanged, as a residual does)
"""

import numpy as np


def sinusoidal(T, C, dtype=np.float64):
    """The (T, C) sinusoidal position table, computed in float64 and returned as `dtype`."""
    if int(T) != T or int(C) != C or T < 0 or C < 1:
        raise ValueError(f"positional: need integers T >= 0 and C >= 1, got T={T}, C={C}")
    T, C = int(T), int(C)
    pos = np.arange(T, dtype=np.float64)[:, None]            # (T, 1)
    two_i = (np.arange(C) // 2 * 2).astype(np.float64)      # (C,)  2i for columns 2i and 2i+1
    angle = pos / 10000.0 ** (two_i / C)                     # (T, C)
    pe = np.empty((T, C))
    pe[:, 0::2] = np.sin(angle[:, 0::2])                     # even columns
    pe[:, 1::2] = np.cos(angle[:, 1::2])                     # odd columns
    return pe.astype(dtype, copy=False)
