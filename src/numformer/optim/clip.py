"""Global-norm gradient clipping, the rule of torch.nn.utils.clip_grad_norm_.

    ‖g‖ = √(Σ_i g_i²)                       over every element of every gradient array
    c   = min(1, max_norm / (‖g‖ + 10⁻⁶))
    g  ← c g                                 in place, one scalar for all arrays

The direction of the update is kept; only its length is capped at about max_norm. The returned
value is ‖g‖ before clipping (worth logging: spikes show instabilities). As in PyTorch, a
non-finite norm makes c NaN and so poisons the gradients; callers check the loss first.
"""

import math

import numpy as np


def clip_grad_norm(grads, max_norm: float) -> float:
    """Scale `grads` (an ndarray or a dict of ndarrays) in place to global norm <= max_norm.

    Returns the global L2 norm before clipping, as a Python float.
    """
    arrays = list(grads.values()) if isinstance(grads, dict) else [grads]
    total_norm = math.sqrt(sum(_sum_of_squares(g) for g in arrays))
    coef = max_norm / (total_norm + 1e-6)
    if not coef >= 1.0:  # also true for NaN, which then propagates as in torch
        for g in arrays:
            g *= coef
    return total_norm


def _sum_of_squares(g: np.ndarray) -> float:
    flat = g.reshape(-1)  # (n,) a view for contiguous g
    with np.errstate(over="ignore"):
        sq = float(np.dot(flat, flat))  # one BLAS pass, no temporary
    if math.isinf(sq):  # g_i² overflowed the dtype although ‖g‖ may fit: rescale (rare)
        scale = float(np.max(np.abs(flat)))
        if math.isfinite(scale) and scale > 0:
            scaled = flat.astype(np.float64) / scale
            sq = float(np.dot(scaled, scaled)) * scale * scale
    return sq
