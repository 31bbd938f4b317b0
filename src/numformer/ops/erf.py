"""The error function erf, its complement erfc, and the standard normal CDF Φ, vectorised.

    erf(x)  = 2/√π ∫₀ˣ exp(−t²) dt          erfc(x) = 1 − erf(x)
    Φ(x)    = ½ erfc(−x/√2)                 φ(x) = exp(−x²/2) / √(2π)

Derivatives (the exact GELU's backward uses the last one):
    d erf(x)/dx = 2/√π · exp(−x²)     d erfc(x)/dx = −2/√π · exp(−x²)     dΦ(x)/dx = φ(x)

GELU's exact form is y = x Φ(x) (ops/gelu.py). NumPy has no erf; these are written from
rational approximations, evaluated as whole-array expressions (no Python loop over elements).
Every region's formula is evaluated on the whole array with its argument clamped into that
region, and the right one is picked per element with np.where. This module is written to be
read; numformer.ops.fast.erf evaluates the same expressions in place, bit for bit the same. Symmetries: erf(−x) = −erf(x), erfc(−x) = 2 − erfc(x).

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

SQRT_1_2 = math.sqrt(0.5)
RSQRT_PI = 1.0 / math.sqrt(math.pi)
RSQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# ---------------------------------------------------------------- float64: Cody's coefficients
# Polynomials are written lowest power first: (c₀, c₁, ...) means c₀ + c₁ t + c₂ t² + ...
CUT64 = 0.46875
N1 = (3209.37758913846947, 377.485237685302021, 113.864154151050156, 3.16112374387056560,
       0.185777706184603153)
D1 = (2844.23683343917062, 1282.61652607737228, 244.024637934444173, 23.6012909523441209)  # monic
N2 = (1230.33935479799725, 2051.07837782607147, 1712.04761263407058, 881.952221241769090,
       298.635138197400131, 66.1191906371416295, 8.88314979438837594, 0.564188496988670089,
       2.15311535474403846e-8)
D2 = (1230.33935480374942, 3439.36767414372164, 4362.61909014324716, 3290.79923573345963,
       1621.38957456669019, 537.181101862009858, 117.693950891312499, 15.7449261107098347)  # monic
N3 = (6.58749161529837803e-4, 1.60837851487422766e-2, 1.25781726111229246e-1, 3.60344899949804439e-1,
       3.05326634961232344e-1, 1.63153871373020978e-2)
D3 = (2.33520497626869185e-3, 6.05183413124413191e-2, 5.27905102951428412e-1, 1.87295284992346047,
       2.56852019228982242)                                                               # monic
BIG64 = 27.5            # erfc(27.5) underflows to 0 in float64; also keeps a² and 1/a² finite

# ---------------------------------------------------------------- float32: fitted here
CUT32 = 0.5
S = (2.0 / math.sqrt(math.pi), -0.3761261720414258, 0.11282949808715527, -0.02676403156657676,
      0.00473024124833885)
P = (16.822405106027254, 20.95091159930238, 12.431207430891126, 3.9152065302137666,
      0.5641951474889341)
Q = (16.822404992949064, 39.93297421837729, 40.66815857090376, 22.527162821062802,
      6.939912001066684)                                                                  # monic
BIG32 = 11.0            # erfc(11) ≈ 1.4e−54 rounds to 0 in float32


def rescaled(p, q, s):
    """P(s b)/Q(s b) written as P̃(b)/Q̃(b) with Q̃ monic again: c_k → c_k s^k / s^deg Q."""
    lead = s ** len(q)
    return (tuple(c * s ** k / lead for k, c in enumerate(p)), tuple(c * s ** k / lead for k, c in enumerate(q)))


# ½ erfcx(b/√2) = P̃(b)/Q̃(b), for Φ: the ½ goes into P̃.
P_PHI, Q_PHI = rescaled(tuple(0.5 * c for c in P), Q, SQRT_1_2)
TOP_PHI32 = 15.5        # Φ(−15.5) ≈ 2e−54 rounds to 0 in float32
ROUND16 = 1.5 * 2.0 ** 19

# The float32 Φ's form, public for the compiled kernels (numformer.ops.fast.kernels), which evaluate
# the same P̃/Q̃ and the same exact split of exp(−b²/2).
PHI_P32, PHI_Q32, PHI_TOP32, ROUND16_32 = P_PHI, Q_PHI, TOP_PHI32, ROUND16


def poly(t, c):
    """c₀ + c₁ t + ... + c_n tⁿ by Horner's rule."""
    p = t * c[-1] + c[-2]
    for ck in reversed(c[:-2]):
        p = p * t + ck
    return p


def monic(t, c):
    """c₀ + c₁ t + ... + c_{n−1} t^{n−1} + tⁿ by Horner's rule."""
    p = t + c[-1]
    for ck in reversed(c[:-1]):
        p = p * t + ck
    return p


# ---------------------------------------------------------------- the regions, on a = |x| ≥ 0

def erf_small64(x):
    """erf(x) = x · N₁(x²)/D₁(x²) for |x| ≤ 0.46875 (x clamped into that range)."""
    t = x * x
    return poly(t, N1) / monic(t, D1) * x


def exp_neg_square64(a):
    """exp(−a²) to full relative accuracy: exp(−h²) · exp(−(a − h)(a + h)), h = ⌊16a⌋/16."""
    h = np.floor(a * 16.0) * (1.0 / 16.0)
    return np.exp(-(h * h)) * np.exp(-((a - h) * (h + a)))   # h² exact: h has ≤ 9 significant bits


def erfc_big64(a):
    """erfc(a) for a ≥ 0.46875 (a clamped into [0.46875, 27.5])."""
    mid = np.minimum(a, 4.0)                                   # Cody's second interval
    g_mid = poly(mid, N2) / monic(mid, D2)
    far = np.maximum(a, 4.0)                                   # his third: (1/√π − z N₃(z)/D₃(z))/a
    z = 1.0 / (far * far)
    g_far = (RSQRT_PI - poly(z, N3) / monic(z, D3) * z) / far
    return np.where(a <= 4.0, g_mid, g_far) * exp_neg_square64(a)


def erf_small32(x):
    """erf(x) = x · S(x²) for |x| < 0.5 (x a float64 array clamped into that range)."""
    return poly(x * x, S) * x


def erfc_big32(a):
    """erfc(a) = exp(−a²) P(a)/Q(a) for a ≥ 0.5 (a a float64 array clamped into [0.5, 11])."""
    e = np.exp(-(a * a))                                       # a² exact for a float32 a
    return poly(a, P) / monic(a, Q) * e


REGIONS = {  # dtype of the evaluation: (cut, erf for |x| < cut, erfc for a ≥ cut, largest a needed)
    np.dtype(np.float64): (CUT64, erf_small64, erfc_big64, BIG64),
    np.dtype(np.float32): (CUT32, erf_small32, erfc_big32, BIG32),
}


def prepare(x):
    """(x as a flat float64 array, shape and dtype of the result, regions): float16 and float32 use
    the float32 forms, everything else the float64 ones."""
    x = np.asarray(x)
    kind = np.float32 if x.dtype in (np.float32, np.float16) else np.float64
    dtype = x.dtype if kind is np.float32 else np.dtype(np.float64)
    return x.astype(np.float64).reshape(-1), (x.shape, dtype), REGIONS[np.dtype(kind)]


def result(r, like):
    """r in the result's shape and dtype; a scalar in gives a NumPy scalar out."""
    shape, dtype = like
    r = r.astype(dtype, copy=False).reshape(shape)
    return r[()] if r.ndim == 0 else r


def erf(x):
    """erf(x), elementwise; float32/float16 input keeps its dtype, anything else gives float64."""
    x, like, (cut, small, big, top) = prepare(x)
    a = np.abs(x)
    near = np.abs(small(np.clip(x, -cut, cut)))               # erf(|x|) where |x| < cut
    far = 1.0 - big(np.clip(a, cut, top))                      # erf(|x|) = 1 − erfc(|x|) ≥ ½ elsewhere
    return result(np.copysign(np.where(a < cut, near, far), x), like)   # odd; erf(−0) = −0


def erfc(x):
    """erfc(x) = 1 − erf(x), elementwise, accurate also where it is tiny (x ≫ 0)."""
    x, like, (cut, small, big, top) = prepare(x)
    a = np.abs(x)
    near = 1.0 - small(np.clip(x, -cut, cut))                  # ∈ (½, 3/2) where |x| < cut
    far = np.abs(np.multiply(x < 0, 2.0) - big(np.clip(a, cut, top)))   # c for x > 0, 2 − c for x < 0
    return result(np.where(a < cut, near, far), like)


def normal_cdf(x):
    """Φ(x) = P(Z ≤ x) for a standard normal Z, elementwise, to relative accuracy in both tails."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float16):
        return erfc(np.multiply(x, -SQRT_1_2, dtype=np.float64)) * 0.5
    b = np.clip(np.abs(x.reshape(-1).astype(np.float32, copy=False)), 0.0, TOP_PHI32)  # beyond, Φ(−b) = 0
    # exp(−b²/2) = exp(−h²/2) · exp(−(b − h)(b + h)/2), h = b rounded to a multiple of 1/16 by
    # adding and subtracting 1.5·2¹⁹ (whose float32 spacing is 1/16): h² is exact in float32
    h = (b + ROUND16) - ROUND16
    e = np.exp(h * h * -0.5) * np.exp((b - h) * (h + b) * -0.5)
    tail = e * (poly(b, P_PHI) / monic(b, Q_PHI))             # ½ erfc(b/√2) = Φ(−|x|)
    phi = np.abs((x.reshape(-1) >= 0) - tail)                  # Φ(−|x|) for x < 0, 1 − Φ(−|x|) for x ≥ 0
    return result(phi, (x.shape, x.dtype))


def normal_pdf(x):
    """φ(x) = exp(−x²/2)/√(2π), elementwise; float32 via float64, where x² is exact."""
    x = np.asarray(x)
    t = np.clip(np.abs(x, dtype=np.float64), 0.0, 40.0)       # φ(40) underflows in float64; no overflow in t²
    dtype = x.dtype if x.dtype in (np.float32, np.float16) else np.dtype(np.float64)
    return result(np.exp(t * t * -0.5) * RSQRT_2PI, (x.shape, dtype))
