"""Fit the polynomial that numformer's compiled float32 kernels use for exp
(src/numformer/ops/fast/kernels.py), and print it.

    python tools/fit_kernel_coefficients.py

It is fitted in float64 by least squares on the relative error, reweighted (Lawson's scheme,
as the float32 erf of ops/erf.py was fitted), keeping the fit with the smallest largest error,
on a dense grid of the interval:

- exp(r) ≈ P(r) on r ∈ [−ln2/2, ln2/2], the core of exp(x) = 2^n · exp(r) with x = n·ln2 + r.

The printed error is that of the float64 evaluation; the kernels evaluate in float32, and
tests/ops/fast/test_kernels.py measures what that costs in ulps.
"""

import math

import numpy as np


def fit_poly(f, lo, hi, deg, iters=40, n=20001):
    """(largest relative error, coefficients lowest power first) of a degree-`deg` P ≈ f on [lo, hi]."""
    x = np.linspace(lo, hi, n)
    y = f(x)
    w = 1.0 / np.abs(y)
    best = None
    for _ in range(iters):
        A = np.stack([x**k for k in range(deg + 1)], axis=1) * w[:, None]
        c, *_ = np.linalg.lstsq(A, y * w, rcond=None)
        rel = np.abs(np.polynomial.polynomial.polyval(x, c) - y) / np.abs(y)
        err = rel.max()
        if best is None or err < best[0]:
            best = (err, c)
        w = w * (rel / err) ** 0.5 + 1e-300
    return best


def show(name, coeffs):
    print(f"{name} = (" + ", ".join(repr(float(c)) for c in coeffs) + ")")


if __name__ == "__main__":
    half = math.log(2.0) / 2
    err, c = fit_poly(np.exp, -half, half, 6)
    print(f"# exp(r) on [-ln2/2, ln2/2]: largest relative error {err:.2e}")
    show("_EXP", c)
