"""Layer normalisation, the fast version: the same formula, signature and cache contract as
numformer.ops.layernorm (read that module for the math and the derivation of backward).

Where numformer.ops.fast.dispatch chooses numba's kernels (numformer.ops.fast.kernels), float32
input runs compiled kernels that take each row once: forward makes μ, σ², rstd, x̂ and y in one kernel; backward makes dx, and adds
dγ and dβ, in one. The row sums are float32, as the reference's are, but summed in another
order, so the results agree with the reference to float32 rounding, not bit for bit. `output`
repeats forward's last step with the same operations, so it gives forward's y again bit for bit.
Everything else (float64, no numba, NUMFORMER_JIT=0) runs NumPy: the reference's operations in
the reference's order, so the same bits, with each mean written as np.add.reduce and a division
(np.mean's Python-level overhead dominates when a row is one token, as in KV-cached decoding)
and the intermediate arrays of forward reused in place.
"""

import numpy as np

from numformer.ops import layernorm as reference
from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA
from numformer.ops.layernorm import Cache


def _affine(C, weight, bias):
    """γ and β as float32 arrays; ones and zeros stand in for a missing one (x·1 and x + 0 are
    exact, so the output is the reference's)."""
    w = np.ones(C, np.float32) if weight is None else np.ascontiguousarray(weight, dtype=np.float32)
    b = np.zeros(C, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    return w, b


def _kernels_take(x, *arrays):
    """True when the kernels take this call: dispatch chooses numba for x and the other arrays
    (a missing γ or β is None), and x has at least one element."""
    return x.size > 0 and dispatch.runs("layernorm", x, *arrays) == NUMBA


def _numpy_forward(x, weight, bias, eps):
    """The reference's forward, bit for bit, with fewer temporary arrays and Python calls."""
    C = x.shape[-1]
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    mu = np.add.reduce(x, axis=-1, keepdims=True)            # (..., 1)
    mu /= C                                                  # the same numbers as x.mean(-1)
    xc = x - mu                                              # (..., C)
    var = np.add.reduce(xc * xc, axis=-1, keepdims=True)     # (..., 1) biased
    var /= C
    var += eps
    rstd = np.sqrt(var, out=var)
    np.divide(1.0, rstd, out=rstd)                           # (..., 1) 1 / √(σ² + eps)
    xhat = np.multiply(xc, rstd, out=xc)                     # (..., C)
    cache = Cache(xhat, rstd, weight, bias)
    return reference.output(cache), cache


def _numpy_backward(dy, cache):
    """The reference's backward, bit for bit, with the means written as sums and a division."""
    xhat, rstd, weight, bias = cache.xhat, cache.rstd, cache.weight, cache.bias
    rows = tuple(range(dy.ndim - 1))
    dbias = dy.sum(axis=rows) if bias is not None else None
    dweight = (dy * xhat).sum(axis=rows) if weight is not None else None
    dxhat = dy * weight if weight is not None else dy
    C = dy.shape[-1]
    mean_dxhat = np.add.reduce(dxhat, axis=-1, keepdims=True) / C                # (..., 1)
    mean_dxhat_xhat = np.add.reduce(dxhat * xhat, axis=-1, keepdims=True) / C    # (..., 1)
    dx = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
    return dx, dweight, dbias


def forward(x, weight, bias, eps=1e-5):
    """y = weight * (x - mean) / sqrt(var + eps) + bias over the last axis. Returns (y, cache)."""
    reference.check_shapes(x, weight, bias)
    if not _kernels_take(x, weight, bias):
        return _numpy_forward(x, weight, bias, eps)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)                     # (R, C)
    xhat, y = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), np.float32)
    w, b = _affine(C, weight, bias)
    dispatch.kernels().layernorm_forward(x2, w, b, np.float32(eps), xhat, rstd, y)
    lead = x.shape[:-1]
    cache = Cache(xhat.reshape(x.shape), rstd.reshape(*lead, 1), weight, bias)
    return y.reshape(x.shape), cache


def output(cache):
    """y = x̂ ⊙ γ + β from forward's cache: forward's output again, bit for bit."""
    xhat, weight, bias = cache.xhat, cache.weight, cache.bias
    if not _kernels_take(xhat, weight, bias):
        return reference.output(cache)
    C = xhat.shape[-1]
    y = np.empty_like(xhat)
    w, b = _affine(C, weight, bias)
    dispatch.kernels().layernorm_output(xhat.reshape(-1, C), w, b, y.reshape(-1, C))
    return y


def backward(dy, cache):
    """Returns (dx, dweight, dbias); a gradient is None where forward got None."""
    xhat, rstd, weight, bias = cache.xhat, cache.rstd, cache.weight, cache.bias
    if dy.shape != xhat.shape:
        raise ValueError(f"layernorm: dy has shape {dy.shape} but y had shape {xhat.shape}")
    if not _kernels_take(xhat, dy, weight, bias):
        return _numpy_backward(dy, cache)
    C = xhat.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, C)
    dx = np.empty_like(dy2)
    dw, db = np.zeros(C, np.float32), np.zeros(C, np.float32)
    w, _ = _affine(C, weight, None)
    dispatch.kernels().layernorm_backward(dy2, np.ascontiguousarray(xhat).reshape(-1, C),
                                          np.ascontiguousarray(rstd).reshape(-1, 1), w, dx, dw, db)
    return dx.reshape(dy.shape), dw if weight is not None else None, db if bias is not None else None
