"""RMS normalisation, the fast version: the same formula, signature and cache contract as
numformer.ops.rmsnorm (read that module for the math and the derivation of backward).

Where numformer.ops.fast.dispatch chooses numba's kernels (numformer.ops.fast.kernels), float32
input runs compiled kernels that take each row once, as the fast LayerNorm does: forward makes the
mean square, rstd, x̂ and y in one kernel; backward makes dx, and adds dγ, in one. The row sums are
float32, as the reference's are, but summed in another order, so the results agree with the
reference to float32 rounding, not bit for bit. `output` repeats forward's last step with the
same operations, so it gives forward's y again bit for bit. Everything else (float64, no numba,
NUMFORMER_JIT=0) is the reference's NumPy code.
"""

import numpy as np

from numformer.ops import rmsnorm as reference
from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA
from numformer.ops.rmsnorm import EPS, Cache


def _gain(C, weight):
    """γ as a float32 array; ones stand in for a missing one (x·1 is exact)."""
    return np.ones(C, np.float32) if weight is None else np.ascontiguousarray(weight, dtype=np.float32)


def _kernels_take(x, *arrays):
    """True when the kernels take this call: dispatch chooses numba for x and the other arrays
    (a missing γ is None), and x has at least one element."""
    return x.size > 0 and dispatch.runs("rmsnorm", x, *arrays) == NUMBA


def forward(x, weight, eps=EPS):
    """y = weight * x / sqrt(mean(x²) + eps) over the last axis. Returns (y, cache)."""
    reference.check_shapes(x, weight)
    if not _kernels_take(x, weight):
        return reference.forward(x, weight, eps)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)                     # (R, C)
    xhat, y = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), np.float32)
    dispatch.kernels().rmsnorm_forward(x2, _gain(C, weight), np.float32(eps), xhat, rstd, y)
    cache = Cache(xhat.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1), weight)
    return y.reshape(x.shape), cache


def output(cache):
    """y = x̂ ⊙ γ from forward's cache: forward's output again, bit for bit."""
    xhat, weight = cache.xhat, cache.weight
    if not _kernels_take(xhat, weight):
        return reference.output(cache)
    C = xhat.shape[-1]
    y = np.empty_like(xhat)
    dispatch.kernels().rmsnorm_output(xhat.reshape(-1, C), _gain(C, weight), y.reshape(-1, C))
    return y


def backward(dy, cache):
    """Returns (dx, dweight); dweight is None where forward got None."""
    xhat, rstd, weight = cache.xhat, cache.rstd, cache.weight
    if dy.shape != xhat.shape:
        raise ValueError(f"rmsnorm: dy has shape {dy.shape} but y had shape {xhat.shape}")
    if not _kernels_take(xhat, dy, weight):
        return reference.backward(dy, cache)
    C = xhat.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, C)
    dx = np.empty_like(dy2)
    dw = np.zeros(C, np.float32)
    dispatch.kernels().rmsnorm_backward(dy2, np.ascontiguousarray(xhat).reshape(-1, C),
                                        np.ascontiguousarray(rstd).reshape(-1, 1), _gain(C, weight), dx, dw)
    return dx.reshape(dy.shape), dw if weight is not None else None
