"""Cross-entropy loss of logits against integer targets (the article's formula 9).

Forward, for each row n of logits z (N rows of V classes) with target t_n:
    log p_n,j = z_n,j − m_n − log Σ_l exp(z_n,l − m_n),   m_n = max_l z_n,l   (stable log-softmax)
    loss = −(1/N) Σ_{n not ignored} log p_n,t_n           N = number of rows not ignored
    logits (..., V)   targets (...) integers in [0, V) or ignore_index   loss: scalar

The article's L = −Σ_i y_i log ŷ_i with a one-hot y is the same thing: only the target's log
probability survives the sum.

Backward (dloss = ∂L/∂loss), fused through the softmax:
    ∂(−log p_n,t)/∂z_n,j = p_n,j − [j = t]
    dlogits_n,j = dloss · (p_n,j − onehot(t_n)_j) / N      for rows not ignored
    dlogits_n,j = 0                                         for ignored rows

If every target is ignored, N = 0: we define the loss as 0 and the gradient as all zeros (the
batch has nothing to learn from), instead of PyTorch's 0/0 = NaN, which would silently poison
the parameters at the next optimizer step.
"""

import numpy as np


def rows_and_targets(logits, targets, ignore_index):
    """(z, t, valid, n, t_safe): logits as (N_all, V) rows, targets as (N_all,), which targets
    count (not ignore_index), how many do, and targets with the ignored ones set to class 0.
    ValueError for targets of the wrong shape or type, or outside [0, V)."""
    targets = np.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: logits have shape {logits.shape} but targets have shape "
                         f"{targets.shape} (expected {logits.shape[:-1]})")
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                                   # (N_all, V)
    t = targets.reshape(-1)                                     # (N_all,)
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= V))
    if bad.any():
        raise ValueError(f"cross_entropy: target {t[bad][0]} is outside [0, {V}) for logits of "
                         f"shape {logits.shape} (ignore_index={ignore_index})")
    t_safe = np.where(valid, t, 0)                              # any class; ignored rows are masked out
    return z, t, valid, int(valid.sum()), t_safe


def forward(logits, targets, ignore_index=-1):
    """Mean of −log softmax(logits)[target] over targets != ignore_index. Returns (loss, cache)."""
    z, t, valid, n, t_safe = rows_and_targets(logits, targets, ignore_index)
    rows = np.arange(len(t))

    shifted = z - z.max(axis=-1, keepdims=True)                 # numerical care: max-subtraction
    e = np.exp(shifted)                                         # (N_all, V)
    sumexp = e.sum(axis=-1)                                     # (N_all,)
    logp_t = shifted[rows, t_safe] - np.log(sumexp)             # log p_t = z_t − m − log Σ, never log(0)
    nll = -logp_t[valid]                                        # (N,) −log p_t of the rows not ignored
    loss = nll.sum() / max(n, 1)                                # N = 0: loss 0 (see module doc)
    probs = e / sumexp[:, None]                                 # p, kept for the fused backward
    return logits.dtype.type(loss), (probs, t_safe, valid, n, logits.shape)


def backward(cache, dloss=1.0):
    """Returns dlogits = dloss · (p − onehot(targets)) / N, zero on ignored rows."""
    probs, t_safe, valid, n, shape = cache
    if n == 0:
        return np.zeros(shape, dtype=probs.dtype)               # nothing to learn from
    coef = probs.dtype.type(dloss / n)                          # stay in the logits' dtype
    d = probs * coef                                            # term 1: dloss · p / N
    d[np.arange(len(t_safe)), t_safe] -= coef                   # term 2: − dloss · onehot / N
    d[~valid] = 0.0
    return d.reshape(shape)
