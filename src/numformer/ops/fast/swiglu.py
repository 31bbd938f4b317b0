"""SwiGLU's gate, the fast version: the same formula, signature and cache contract as
numformer.ops.swiglu (read that module for the math and SiLU's derivative).

Where numformer.ops.fast.dispatch chooses numba's kernels (numformer.ops.fast.kernels), float32
input runs one compiled pass per formula: forward (and `output`, which backward's caller uses to
make h again) computes σ, SiLU and h per element, backward σ, du and dg; NumPy's code is about ten
passes over the arrays each. σ goes through the kernels' own exp (a polynomial), so the results
agree with the reference to float32 rounding, not bit for bit; `output` is forward's kernel, so
it gives forward's h again bit for bit. Everything else is the reference's NumPy code.
"""

import numpy as np

from numformer.ops import swiglu as reference
from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA
from numformer.ops.swiglu import Cache


def _kernels_take(*arrays):
    return arrays[0].size > 0 and dispatch.runs("swiglu", *arrays) == NUMBA


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def forward(gate, up):
    """h = SiLU(gate) ⊙ up. Returns (h, cache)."""
    reference.check_shapes(gate, up)
    if not _kernels_take(gate, up):
        return reference.forward(gate, up)
    cache = Cache(gate, up)
    return output(cache), cache


def output(cache):
    """h = SiLU(g) ⊙ u from forward's cache: forward's output again, bit for bit."""
    g, u = cache.gate, cache.up
    if not _kernels_take(g, u):
        return reference.output(cache)
    h = np.empty(g.shape, np.float32)
    dispatch.kernels().swiglu_forward(_flat(g), _flat(u), h.reshape(-1))
    return h


def backward(dh, cache):
    """Returns (dgate, dup)."""
    g, u = cache.gate, cache.up
    if dh.shape != g.shape:
        raise ValueError(f"swiglu: dh has shape {dh.shape} but h had shape {g.shape}")
    if not _kernels_take(g, u, dh):
        return reference.backward(dh, cache)
    dg, du = np.empty(g.shape, np.float32), np.empty(g.shape, np.float32)
    dispatch.kernels().swiglu_backward(_flat(g), _flat(u), _flat(dh), dg.reshape(-1), du.reshape(-1))
    return dg, du
