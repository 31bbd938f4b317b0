"""GELU, the fast version: the same formula, signature and cache contract as numformer.ops.gelu
(read that module for the math), with different numerics per dtype and in cache-sized slices.

- float64 (gradient checks): the tanh form's gate s = ½ (1 + tanh u) is written as sigmoid(2u)
  through e = exp(−|2u|) ≤ 1, which never overflows and stays accurate in the far negative tail,
  where 1 + tanh u would cancel to 0 (at x = −20, s ≈ 1e−260 instead of 0).
- float32 (training): s = ½ (1 + tanh u) as PyTorch computes it, one np.tanh pass; the tail's
  cancellation costs nothing that float32 can show next to x.
- x is clipped to ±40 inside the gate only (float64), or x² to 40² where the slope needs it
  (float32): beyond it the gate is exactly 0 or 1 and its derivative exactly 0, so the limit
  changes no result, while x³ cannot overflow.
- the exact form uses erfc for Φ, so Φ(−20) ≈ 2.8e−89 is a real number, not 1 − 1 = 0.
- Elementwise work is done in slices of `chunk` elements (default CHUNK): the gate's dozen NumPy
  passes then run on data that stays in the CPU's L2 cache.
- output_and_slope gives forward's output again, bit for bit, with the slope, from one
  evaluation of the gate: the GPT keeps no GELU output and gets it back at backward time.

Φ and φ come from numformer.ops.fast.erf: numformer.ops.erf's formulas (Cody's rationals in
float64; in float32 a low-degree form evaluated in float32, within 9 ulp) evaluated in place, the
same bits, a few array passes per slice. `erf` and `erfc` stay
importable from here.

Where numformer.ops.fast.dispatch chooses numba's kernels (numformer.ops.fast.kernels: numba
installed and not switched off), float32 arrays skip all of the above: one compiled pass per
call computes the gate, the output and the slope per element. The tanh form's
gate is sigmoid(2u) through exp(−|2u|), as the float64 gate above, with exp within 2 ulp; the
exact form's Φ is numformer.ops.erf's float32 rational form (within 9 ulp, relatively, in both
tails), and its exp(−x²/2) serves φ too. float64 always takes the NumPy code.
"""

import math

import numpy as np

from numformer.ops.fast.erf import erf, erfc, normal_cdf, normal_pdf  # noqa: F401  (erf, erfc: importable here)
from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA
from numformer.ops.gelu import FORMS, Cache

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_C = 0.044715
_CLIP = 40.0            # |x| beyond which the gate is exactly saturated in float64


def _clip(x):
    """x limited to [−_CLIP, _CLIP] (np.clip's result; two ufuncs cost less than its wrapper)."""
    return np.minimum(np.maximum(x, -_CLIP), _CLIP)


def _tanh_slope(xc, factor, g):
    """factor · g · du/dx, with du/dx = √(2/π) (1 + 3 · 0.044715 x²), computed in place in xc
    (the clipped input, no longer needed): the tanh form's ds/dx for either way of writing g."""
    ds = xc
    ds *= xc
    ds *= 3.0 * _C
    ds += 1.0
    ds *= factor * _SQRT_2_OVER_PI
    ds *= g
    return ds


def _gate_tanh(x, with_grad):
    """s = sigmoid(2u) for the tanh form, and ds/dx if with_grad."""
    xc = _clip(x)                                        # numerical care: no overflow in x³, x²
    # z = 2u = 2√(2/π) (x + 0.044715 x³), evaluated in place as ((x² · 2√(2/π)·0.044715) + 2√(2/π)) · x
    z = xc * xc
    z *= 2.0 * _SQRT_2_OVER_PI * _C
    z += 2.0 * _SQRT_2_OVER_PI
    z *= xc
    e = np.abs(z)                                        # numerical care: e = exp(−|z|) <= 1,
    np.negative(e, out=e)                                # never overflows
    np.exp(e, out=e)
    r = e + 1.0
    np.reciprocal(r, out=r)                              # r = 1 / (1 + e)
    # sigmoid(z) = r for z >= 0 and e·r for z < 0; written as r · (1 − [z < 0](1 − e)) because
    # arithmetic on the whole array is far faster in NumPy than np.where or a where= mask
    s = 1.0 - e
    s *= z < 0
    np.subtract(1.0, s, out=s)
    s *= r
    if not with_grad:
        return s
    r *= r
    r *= e                                               # e r² = sigmoid(z) · sigmoid(−z) = (1 − tanh² u) / 4
    return s, _tanh_slope(xc, 2.0, r)                   # ds = 2 · e r² · √(2/π) (1 + 3 · 0.044715 x²)


def _gate_exact(x, with_grad):
    """s = Φ(x) for the exact form, and ds/dx = φ(x) if with_grad (both finite and warning-free
    for any x, and relatively accurate in the tails: Φ(−20) ≈ 2.8e−89 in float64)."""
    s = normal_cdf(x)
    return (s, normal_pdf(x)) if with_grad else s


def _gate_tanh_float32(x, with_grad):
    """The tanh form's gate as PyTorch computes it, s = ½ (1 + tanh u), for float32 input.

    In float32 the far negative tail's cancellation in 1 + tanh u costs nothing that float32 can
    show next to x (the error stays below float32's rounding of |x|), and np.tanh is one
    vectorised pass: 8 array passes for the gate instead of 14 (docs/performance.md has the
    time that saves). float64, used for gradient checks, keeps the sigmoid form above, which is accurate
    even where the gate is 1e−260.

    Instead of clipping x (two passes), x² is limited to _CLIP² (one pass), and only where the
    slope needs it: u = x (√(2/π) + √(2/π)·0.044715 x²) is then still beyond ±9 for |x| > _CLIP,
    where tanh u is exactly ±1 in float32. The gate alone needs no limit at all: where x² or u
    overflows to ±inf, tanh u = ±1, the gate's true value."""
    with np.errstate(over="ignore"):                     # numerical care: x², x³ may be ±inf; tanh(±inf) = ±1
        x2 = x * x
        if with_grad:
            np.minimum(x2, _CLIP * _CLIP, out=x2)         # numerical care: x² finite in the slope
        u = x2 * (_SQRT_2_OVER_PI * _C)                   # u = √(2/π) (x + 0.044715 x³)
        u += _SQRT_2_OVER_PI
        u *= x
    t = np.tanh(u, out=u)
    s = t + 1.0
    s *= 0.5                                             # s = ½ (1 + tanh u)
    if not with_grad:
        return s
    t *= t
    np.subtract(1.0, t, out=t)                           # 1 − tanh² u
    ds = x2                                              # ds = ½ (1 − tanh² u) · √(2/π) (1 + 3 · 0.044715 x²),
    ds *= 3.0 * _C                                       # the operations of _tanh_slope, so the same bits
    ds += 1.0
    ds *= 0.5 * _SQRT_2_OVER_PI
    ds *= t
    return s, ds


def _numpy_gate(form, dtype):
    """The gate the NumPy code evaluates (dispatch's NumPy rows for gelu): the tanh form's as
    PyTorch writes it for float32, through exp(−|2u|) for float64; the exact form's Φ for both."""
    if form == "exact":
        return _gate_exact
    return _gate_tanh_float32 if dtype == np.float32 else _gate_tanh


CHUNK = 1 << 16          # elements per slice: 256 KiB of float32


def _chunks(n, chunk):
    return (slice(i, min(i + chunk, n)) for i in range(0, n, chunk))


def forward(x, form="tanh", chunk=CHUNK):
    """y = x Φ(x) (form="exact") or its tanh approximation (default). Returns (y, cache).

    The cache is just x: backward recomputes the gate, which is cheaper than storing two more
    arrays of x's size.
    """
    if form not in FORMS:
        raise ValueError(f"gelu: form must be 'tanh' or 'exact', got {form!r}")
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    xf, yf = x.reshape(-1), y.reshape(-1)
    cache = Cache(x, form, chunk)
    if dispatch.runs("gelu", x) == NUMBA:
        kernels = dispatch.kernels()
        kernel = kernels.gelu_tanh_forward if form == "tanh" else kernels.gelu_exact_forward
        kernel(xf, yf)                                                  # y = x s, one pass
        return y, cache
    gate = _numpy_gate(form, x.dtype)
    for c in _chunks(xf.size, chunk):
        np.multiply(xf[c], gate(xf[c], with_grad=False), out=yf[c])     # y = x s
    return y, cache


def output_and_slope(cache):
    """(y, dy/dx) from forward's cache: the output recomputed, bit for bit as forward made it,
    and the local derivative s + x · ds/dx that backward multiplies dy by. Both come out of one
    evaluation of the gate, so a caller that needs y again at backward time (the GPT, which does
    not keep GELU's output; see model/gpt.py) gets it for about the price of backward alone:
    dx = dy ⊙ slope."""
    x, form = cache.x, cache.form
    y, slope = np.empty_like(x), np.empty_like(x)
    xf, yf, sf = x.reshape(-1), y.reshape(-1), slope.reshape(-1)
    if dispatch.runs("gelu", x) == NUMBA:
        kernels = dispatch.kernels()
        kernel = kernels.gelu_tanh_output_and_slope if form == "tanh" else kernels.gelu_exact_output_and_slope
        kernel(xf, yf, sf)
        return y, slope
    gate = _numpy_gate(form, x.dtype)
    for c in _chunks(xf.size, cache.chunk or CHUNK):
        s, ds = gate(xf[c], with_grad=True)
        np.multiply(xf[c], s, out=yf[c])                                # y = x s
        ds *= xf[c]              # term 2: x · ds/dx
        np.add(ds, s, out=sf[c])  # term 1: s
    return y, slope


def backward(dy, cache):
    """Returns dx."""
    x, form = cache.x, cache.form
    if dy.shape != x.shape:
        raise ValueError(f"gelu: dy has shape {dy.shape} but x had shape {x.shape}")
    dyf = np.ascontiguousarray(dy).reshape(-1)
    dx = np.empty(x.shape, dtype=np.result_type(dy, x))
    xf, dxf = x.reshape(-1), dx.reshape(-1)
    if dispatch.runs("gelu", x, dyf) == NUMBA:
        kernels = dispatch.kernels()
        kernel = kernels.gelu_tanh_backward if form == "tanh" else kernels.gelu_exact_backward
        kernel(xf, dyf, dxf)
        return dx
    gate = _numpy_gate(form, x.dtype)
    for c in _chunks(xf.size, cache.chunk or CHUNK):
        s, ds = gate(xf[c], with_grad=True)
        ds *= xf[c]              # term 2: x · ds/dx
        ds += s                  # term 1: s
        np.multiply(dyf[c], ds, out=dxf[c])
    return dx
