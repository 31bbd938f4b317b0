"""The error function erf, its complement erfc, and the standard normal CDF Φ, vectorised.

    erf(x)  = 2/√π ∫₀ˣ exp(−t²) dt          erfc(x) = 1 − erf(x)
    Φ(x)    = ½ erfc(−x/√2)                 φ(x) = exp(−x²/2) / √(2π)

Derivatives (the exact GELU's backward uses the last one):
    d erf(x)/dx = 2/√π · exp(−x²)     d erfc(x)/dx = −2/√π · exp(−x²)     dΦ(x)/dx = φ(x)

GELU's exact form is y = x Φ(x) (ops/gelu.py). NumPy has no erf; these are written from
rational approximations, evaluated as a few whole-array passes (no Python loop over elements).
Every region's formula is evaluated on the whole array with its argument clamped into that
region, and the right one is picked per element (`_pick`), so no boolean gather or scatter is
needed. Symmetries: erf(−x) = −erf(x), erfc(−x) = 2 − erfc(x).

float64 (W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23,
1969, with the coefficients of his CALERF), a = |x|:

    a ≤ 0.46875:      erf(x)  = x · N₁(x²) / D₁(x²)                       degrees 4 / 4
    0.46875 < a ≤ 4:  erfc(a) = exp(−a²) · N₂(a) / D₂(a)                  degrees 8 / 8
    a > 4:            erfc(a) = exp(−a²)/a · (1/√π − z N₃(z)/D₃(z)),  z = 1/a²,  degrees 5 / 5

    and elsewhere erf = 1 − erfc, erfc = 1 − erf, both without cancellation (each is ≥ ½ there).
    exp(−a²) is exp(−h²) · exp(−(a − h)(a + h)) with h = a rounded down to a multiple of 1/16:
    h² is exact, so the large exponent carries no rounding error (a² itself would lose up to
    a²·2⁻⁵³ relative, 7e−14 at a = 26). erfc(a) underflows to 0 beyond a ≈ 27.2.
    Measured against math.erf / math.erfc over [−30, 30] and tiny arguments (tests/ops/test_erf.py):
    relative error at most 4.5e−16 for erf and 9e−16 for erfc wherever erfc(x) > 1e−300.

float32 (and float16): the input is widened to float64, where x² of a float32 number is exact
(24 + 24 significant bits fit in 53), so exp(−x²) needs no splitting, and two low-degree forms
fitted for float32 accuracy are evaluated there, then rounded once:

    a < 0.5:   erf(x)  = x · S(x²),                S of degree 4
    a ≥ 0.5:   erfc(a) = exp(−a²) · P(a) / Q(a),   P of degree 4, Q monic of degree 5

    S approximates erf(x)/x on x² ∈ [0, ¼] to 1.6e−9 relative, with S(0) = 2/√π exactly so that
    tiny x get 2x/√π; P/Q approximates the scaled complement erfcx(a) = exp(a²) erfc(a) on
    [0, 11] to 6.8e−9 relative (erfc(11) is below float32's smallest number). Both are
    near-minimax, fitted for this module by least squares on the relative error with Lawson's
    reweighting. That is a tenth of a float32 ulp, so the rounding to
    float32 decides the result: measured at most 0.62 ulp for erf and erfc over dense grids.
    Lower degrees and one region fewer make this path a quarter to a third of the float64 one's
    time. Evaluated in float32 arithmetic instead they would be up to 9 ulp off (see Φ below).

Φ in float32 is GELU's gate, on the hot path of every exact-GELU model, so it is evaluated in
float32 arithmetic, in a third less time than the float64 evaluation above. It uses the same P/Q
for every x, rescaled to b = |x| (a = b/√2 would round, and an error of one ulp in a moves
erfc(a) by 2a² ulp): ½ erfc(b/√2) = exp(−b²/2) · P̃(b)/Q̃(b), and Φ(x) = ½ erfc(b/√2) for x < 0,
1 − ½ erfc(b/√2) for x ≥ 0, with no branch near 0 because Φ stays near ½ there. exp(−b²/2) is
exp(−h²/2) · exp(−(b − h)(b + h)/2) with h = b rounded to a multiple of 1/16, so that h² is
exact in float32. NumPy's float32 exp (up to 2.4 ulp) and Horner's rule in float32 leave Φ within
9 ulp: measured at most 8.3 ulp (5.5e−7 relative), 0.8 ulp on average, over a dense grid.
In float64, Φ(x) = ½ erfc(−x/√2), accurate to a few x²·1e−16 relative (the rounding of x/√2;
3.7e−13 measured at x = −38), so Φ(−20) ≈ 2.75e−89 is a real number, not 0.

Special values: erf(±0) = ±0 (the sign kept), erf(±∞) = ±1, erfc(−∞) = 2, erfc(∞) = 0,
Φ(−∞) = 0, Φ(∞) = 1, NaN gives NaN. Integer and Python-number inputs are computed in float64;
float16 and float32 inputs keep their dtype.
"""

from __future__ import annotations

import math

import numpy as np

_SQRT_1_2 = math.sqrt(0.5)
_RSQRT_PI = 1.0 / math.sqrt(math.pi)
_RSQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# ---------------------------------------------------------------- float64: Cody's coefficients
# Polynomials are written lowest power first: (c₀, c₁, ...) means c₀ + c₁ t + c₂ t² + ...
_CUT64 = 0.46875
_N1 = (3209.37758913846947, 377.485237685302021, 113.864154151050156, 3.16112374387056560,
       0.185777706184603153)
_D1 = (2844.23683343917062, 1282.61652607737228, 244.024637934444173, 23.6012909523441209)  # monic
_N2 = (1230.33935479799725, 2051.07837782607147, 1712.04761263407058, 881.952221241769090,
       298.635138197400131, 66.1191906371416295, 8.88314979438837594, 0.564188496988670089,
       2.15311535474403846e-8)
_D2 = (1230.33935480374942, 3439.36767414372164, 4362.61909014324716, 3290.79923573345963,
       1621.38957456669019, 537.181101862009858, 117.693950891312499, 15.7449261107098347)  # monic
_N3 = (6.58749161529837803e-4, 1.60837851487422766e-2, 1.25781726111229246e-1, 3.60344899949804439e-1,
       3.05326634961232344e-1, 1.63153871373020978e-2)
_D3 = (2.33520497626869185e-3, 6.05183413124413191e-2, 5.27905102951428412e-1, 1.87295284992346047,
       2.56852019228982242)                                                               # monic
_BIG64 = 27.5            # erfc(27.5) underflows to 0 in float64; also keeps a² and 1/a² finite

# ---------------------------------------------------------------- float32: fitted here
_CUT32 = 0.5
_S = (2.0 / math.sqrt(math.pi), -0.3761261720414258, 0.11282949808715527, -0.02676403156657676,
      0.00473024124833885)
_P = (16.822405106027254, 20.95091159930238, 12.431207430891126, 3.9152065302137666,
      0.5641951474889341)
_Q = (16.822404992949064, 39.93297421837729, 40.66815857090376, 22.527162821062802,
      6.939912001066684)                                                                  # monic
_BIG32 = 11.0            # erfc(11) ≈ 1.4e−54 rounds to 0 in float32


def _rescaled(p, q, s):
    """P(s b)/Q(s b) written as P̃(b)/Q̃(b) with Q̃ monic again: c_k → c_k s^k / s^deg Q."""
    lead = s ** len(q)
    return (tuple(c * s ** k / lead for k, c in enumerate(p)), tuple(c * s ** k / lead for k, c in enumerate(q)))


# ½ erfcx(b/√2) = P̃(b)/Q̃(b), for Φ: the ½ goes into P̃.
_P_PHI, _Q_PHI = _rescaled(tuple(0.5 * c for c in _P), _Q, _SQRT_1_2)
_TOP_PHI32 = 15.5        # Φ(−15.5) ≈ 2e−54 rounds to 0 in float32
_ROUND16 = 1.5 * 2.0 ** 19

# The float32 Φ's form, public for the compiled kernels (numformer.ops.fast.kernels), which evaluate
# the same P̃/Q̃ and the same exact split of exp(−b²/2).
PHI_P32, PHI_Q32, PHI_TOP32, ROUND16_32 = _P_PHI, _Q_PHI, _TOP_PHI32, _ROUND16


def _poly(t, c):
    """c₀ + c₁ t + ... + c_n tⁿ by Horner's rule, in one new array."""
    p = t * c[-1]
    p += c[-2]
    for ck in reversed(c[:-2]):
        p *= t
        p += ck
    return p


def _monic(t, c):
    """c₀ + c₁ t + ... + c_{n−1} t^{n−1} + tⁿ by Horner's rule, in one new array."""
    p = t + c[-1]
    for ck in reversed(c[:-1]):
        p *= t
        p += ck
    return p


def _pick(first, cond, second):
    """`first` where cond, else `second`, for finite arrays: first·w + second·(1 − w) with w ∈ {0, 1}
    is exact (each product is the number itself or zero) and several times faster than np.where."""
    w = cond.astype(first.dtype)
    first *= w
    np.subtract(1.0, w, out=w)
    second *= w
    first += second
    return first


# ---------------------------------------------------------------- the kernels, on a = |x| ≥ 0

def _erf_small64(x):
    """erf(x) for |x| ≤ 0.46875 (x clamped into that range; odd, so the sign is kept)."""
    t = x * x
    r = _poly(t, _N1)
    r /= _monic(t, _D1)
    r *= x
    return r


def _exp_neg_square64(a):
    """exp(−a²) to full relative accuracy: exp(−h²) · exp(−(a − h)(a + h)), h = ⌊16a⌋/16."""
    h = np.floor(a * 16.0)
    h *= 1.0 / 16.0
    d = a - h
    e = h * h                    # exact: h has at most 9 significant bits for a < 32
    np.negative(e, out=e)
    np.exp(e, out=e)
    h += a
    d *= h                       # (a − h)(a + h) = a² − h², small
    np.negative(d, out=d)
    np.exp(d, out=d)
    e *= d
    return e


def _erfc_big64(a):
    """erfc(a) for a ≥ 0.46875 (a clamped into [0.46875, 27.5])."""
    mid = np.minimum(a, 4.0)                                   # Cody's second interval
    g = _poly(mid, _N2)
    g /= _monic(mid, _D2)
    far = np.maximum(a, 4.0)                                   # his third: g = (1/√π − z N₃/D₃)/a
    z = far * far
    np.reciprocal(z, out=z)
    r = _poly(z, _N3)
    r /= _monic(z, _D3)
    r *= z
    np.subtract(_RSQRT_PI, r, out=r)
    r /= far
    g = _pick(g, a <= 4.0, r)
    g *= _exp_neg_square64(a)
    return g


def _erf_small32(x):
    """erf(x) for |x| < 0.5 (x a float64 array clamped into that range)."""
    r = _poly(x * x, _S)
    r *= x
    return r


def _erfc_big32(a):
    """erfc(a) for a ≥ 0.5 to float32 accuracy (a a float64 array clamped into [0.5, 11])."""
    e = a * a                    # exact for a float32 a
    np.negative(e, out=e)
    np.exp(e, out=e)
    r = _poly(a, _P)
    r /= _monic(a, _Q)
    r *= e
    return r


_KERNELS = {  # dtype of the evaluation: (cut, erf for |x| < cut, erfc for a ≥ cut, largest a needed)
    np.dtype(np.float64): (_CUT64, _erf_small64, _erfc_big64, _BIG64),
    np.dtype(np.float32): (_CUT32, _erf_small32, _erfc_big32, _BIG32),
}


def _prepare(x):
    """(x as a flat float64 array, shape and dtype of the result, kernels): float16 and float32 use
    the float32 forms, everything else the float64 ones."""
    x = np.asarray(x)
    kind = np.float32 if x.dtype in (np.float32, np.float16) else np.float64
    dtype = x.dtype if kind is np.float32 else np.dtype(np.float64)
    return x.astype(np.float64).reshape(-1), (x.shape, dtype), _KERNELS[np.dtype(kind)]


def _result(r, like):
    shape, dtype = like
    r = r.astype(dtype, copy=False).reshape(shape)
    return r[()] if r.ndim == 0 else r      # a scalar in, a NumPy scalar out


def _parts(x, kernels):
    """(erf(x) for |x| < cut, erfc(|x|) for |x| ≥ cut, |x| < cut), each kernel on clamped input."""
    cut, small, big, top = kernels
    a = np.abs(x)
    near = a < cut
    s = small(np.clip(x, -cut, cut))
    c = big(np.clip(a, cut, top, out=a))
    return s, c, near


def erf(x):
    """erf(x), elementwise; float32/float16 input keeps its dtype, anything else gives float64."""
    x, like, kernels = _prepare(x)
    s, c, near = _parts(x, kernels)
    np.subtract(1.0, c, out=c)                 # erf(|x|) = 1 − erfc(|x|) ≥ ½ where |x| ≥ cut
    np.abs(s, out=s)
    r = _pick(s, near, c)                      # erf(|x|)
    np.copysign(r, x, out=r)                   # erf is odd; keeps erf(−0) = −0
    return _result(r, like)


def erfc(x):
    """erfc(x) = 1 − erf(x), elementwise, accurate also where it is tiny (x ≫ 0)."""
    x, like, kernels = _prepare(x)
    s, c, near = _parts(x, kernels)
    np.subtract(1.0, s, out=s)                 # 1 − erf(x) ∈ (½, 3/2) where |x| < cut
    far = np.multiply(x < 0, 2.0)              # erfc(x) = c for x > 0, 2 − c for x < 0:
    far -= c                                   # |2·[x < 0] − c|, one rounding either way
    np.abs(far, out=far)
    return _result(_pick(s, near, far), like)


def normal_cdf(x):
    """Φ(x) = P(Z ≤ x) for a standard normal Z, elementwise, to relative accuracy in both tails."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float16):
        return erfc(np.multiply(x, -_SQRT_1_2, dtype=np.float64)) * 0.5
    x32 = x.reshape(-1).astype(np.float32, copy=False)
    b = np.abs(x32)
    np.clip(b, 0.0, _TOP_PHI32, out=b)         # beyond, Φ(−b) underflows in float32; no inf/inf
    # exp(−b²/2) = exp(−h²/2) · exp(−(b − h)(b + h)/2), h = b rounded to a multiple of 1/16 by
    # adding and subtracting 1.5·2¹⁹ (whose float32 spacing is 1/16): h² is exact in float32
    h = b + _ROUND16
    h -= _ROUND16
    e = h * h
    e *= -0.5
    np.exp(e, out=e)
    d = b - h                                  # exact
    h += b
    d *= h
    d *= -0.5
    np.exp(d, out=d)
    e *= d                                     # exp(−b²/2)
    r = _poly(b, _P_PHI)
    r /= _monic(b, _Q_PHI)
    e *= r                                     # ½ erfc(b/√2) = Φ(−|x|)
    np.subtract(x32 >= 0, e, out=e)            # Φ(x) = that for x < 0 (|0 − it|, exact), 1 − it for x ≥ 0
    np.abs(e, out=e)
    return _result(e, (x.shape, x.dtype))


def normal_pdf(x):
    """φ(x) = exp(−x²/2)/√(2π), elementwise; float32 via float64, where x² is exact."""
    x = np.asarray(x)
    t = np.abs(x, dtype=np.float64)
    np.clip(t, 0.0, 40.0, out=t)               # φ(40) underflows in float64; no overflow in t²
    t *= t
    t *= -0.5
    np.exp(t, out=t)
    t *= _RSQRT_2PI
    return _result(t, (x.shape, x.dtype if x.dtype in (np.float32, np.float16) else np.dtype(np.float64)))
