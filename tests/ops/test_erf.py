"""numformer.ops.erf against Python's math.erf / math.erfc, on dense grids and at the edges.

Bounds, per dtype (the measured maxima are in the module docstring):
- float64: relative error below 1e−15 for erf and 2e−15 for erfc (where erfc > 1e−300),
  1e−12 for Φ (its x/√2 rounds; 3.7e−13 measured out to x = −38).
- float32: within 1 ulp of the exact value at the float32 input for erf and erfc; within 9 ulp for
  Φ, which is evaluated in float32 arithmetic for GELU's speed (8.3 ulp measured).
"""

import math

import numpy as np
import pytest

from numformer.ops import erf as E

F32_TINY = float(np.finfo(np.float32).tiny)          # 1.1754944e−38, the smallest normal float32
F32_SUB = float(np.float32(1e-45))                   # the smallest subnormal float32

GRID64 = np.unique(np.concatenate([
    np.linspace(-30.0, 30.0, 300001),
    np.geomspace(1e-300, 1.0, 600), -np.geomspace(1e-300, 1.0, 600),
    # both sides of Cody's region boundaries and of float64 erfc's underflow
    [np.nextafter(0.46875, 0), 0.46875, np.nextafter(0.46875, 1), np.nextafter(4.0, 0), 4.0,
     np.nextafter(4.0, 5), 26.5, 27.2, 27.3],
]))
GRID32 = np.unique(np.concatenate([
    np.linspace(-11.0, 11.0, 1_000_001, dtype=np.float32),
    np.geomspace(F32_SUB, 1.0, 2000).astype(np.float32),
    -np.geomspace(F32_SUB, 1.0, 2000).astype(np.float32),
    np.nextafter(np.float32([0.5, -0.5]), np.float32(0)), np.float32([0.5, -0.5]),
]))


def reference(fn, x):
    return np.array([fn(float(t)) for t in np.asarray(x).ravel()]).reshape(np.shape(x))


def rel_err(ours, ref):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.abs(ours - ref) / np.abs(ref)


def ulps32(ours, ref):
    """|ours − ref| in units of the float32 spacing at ref (ref exact, in float64)."""
    spacing = np.spacing(np.abs(np.asarray(ref).astype(np.float32))).astype(np.float64)
    return np.abs(np.asarray(ours, dtype=np.float64) - ref) / spacing


def phi_reference(t):
    return 0.5 * math.erfc(-t / math.sqrt(2.0))


# ----------------------------------------------------------------------------- dense grids


def test_float64_erf_on_a_dense_grid():
    ours = E.erf(GRID64)
    assert ours.dtype == np.float64 and ours.shape == GRID64.shape
    ref = reference(math.erf, GRID64)
    nonzero = ref != 0
    assert rel_err(ours[nonzero], ref[nonzero]).max() < 1e-15


def test_float64_erfc_on_a_dense_grid():
    ours = E.erfc(GRID64)
    ref = reference(math.erfc, GRID64)
    normal = ref > 1e-300                     # below that math.erfc is subnormal
    assert rel_err(ours[normal], ref[normal]).max() < 2e-15
    assert np.all(ours[GRID64 >= 27.3] == 0.0)
    assert np.all(ours[GRID64 <= -6] == 2.0)


@pytest.mark.parametrize("name", ["erf", "erfc"])
def test_float32_within_one_ulp_on_a_dense_grid(name):
    ours = getattr(E, name)(GRID32)
    assert ours.dtype == np.float32
    ref = reference(getattr(math, name), GRID32)
    representable = np.abs(ref) >= F32_TINY   # below, float32 has fewer digits than 1 ulp means
    assert ulps32(ours[representable], ref[representable]).max() <= 1.0
    # and in the subnormal range, within one subnormal step
    assert np.abs(ours[~representable] - ref[~representable]).max() <= F32_SUB


def test_float64_normal_cdf_keeps_relative_accuracy_in_the_far_tail():
    x = np.linspace(-38.0, 8.0, 46001)
    ours = E.normal_cdf(x)
    ref = reference(phi_reference, x)
    normal = ref > 1e-300
    assert rel_err(ours[normal], ref[normal]).max() < 1e-12
    assert E.normal_cdf(-20.0) == pytest.approx(2.7536241186062336e-89, rel=1e-13)  # not 1 − 1 = 0


def test_float32_normal_cdf_within_nine_ulp():
    x = np.unique(np.concatenate([np.linspace(-14.0, 8.0, 400001, dtype=np.float32),
                                  np.float32([0.0, -0.0, 1e-30, -1e-30, F32_SUB, -F32_SUB])]))
    ours = E.normal_cdf(x)
    assert ours.dtype == np.float32
    ref = reference(phi_reference, x)
    representable = ref >= F32_TINY
    err = ulps32(ours[representable], ref[representable])
    assert err.max() <= 9.0 and err.mean() <= 1.0
    assert np.abs(ours[~representable] - ref[~representable]).max() <= 9 * F32_SUB


@pytest.mark.parametrize("dtype, bound", [(np.float64, 1e-15), (np.float32, None)])
def test_normal_pdf(dtype, bound):
    x = np.linspace(-37.0, 37.0, 20001).astype(dtype)
    ours = E.normal_pdf(x)
    assert ours.dtype == dtype
    ref = reference(lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi), x)
    if bound is None:
        representable = ref >= F32_TINY
        assert ulps32(ours[representable], ref[representable]).max() <= 1.0
    else:
        normal = ref > 1e-300
        assert rel_err(ours[normal], ref[normal]).max() < bound


# ----------------------------------------------------------------------------- the edges


EDGES = [0.0, 5e-324, 1e-300, F32_SUB, F32_TINY, 1e-8, 0.5, 4.0, 6.0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_edge_values_match_math(dtype, sign):
    x = (sign * np.array(EDGES)).astype(dtype)
    for name in ("erf", "erfc"):
        ours = getattr(E, name)(x).astype(np.float64)
        ref = reference(getattr(math, name), x)         # math at the value x really holds
        if dtype == np.float64:
            np.testing.assert_allclose(ours, ref, rtol=1e-15, atol=0, err_msg=name)
        else:
            assert np.all((ulps32(ours, ref) <= 1.0) | (np.abs(ours - ref) <= F32_SUB)), name


def test_tiny_arguments_keep_their_relative_accuracy():
    # erf(x) ≈ 2x/√π: a result that is not rounded to 0 or to x
    assert E.erf(1e-300) == pytest.approx(2e-300 / math.sqrt(math.pi), rel=1e-15)
    assert E.erf(-1e-300) == pytest.approx(-2e-300 / math.sqrt(math.pi), rel=1e-15)
    assert E.erf(5e-324) == math.erf(5e-324) and E.erf(-5e-324) == math.erf(-5e-324)
    tiny32 = np.float32(F32_TINY)
    assert E.erf(tiny32) == np.float32(2 * F32_TINY / math.sqrt(math.pi))
    assert E.erfc(np.float32(-F32_TINY)) == np.float32(1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_infinities_nan_and_the_sign_of_zero(dtype):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], dtype=dtype)
    erf, erfc, cdf = E.erf(x), E.erfc(x), E.normal_cdf(x)
    assert erf.dtype == erfc.dtype == cdf.dtype == dtype
    assert list(erf[:2]) == [1.0, -1.0] and list(erfc[:2]) == [0.0, 2.0] and list(cdf[:2]) == [1.0, 0.0]
    assert np.isnan(erf[2]) and np.isnan(erfc[2]) and np.isnan(cdf[2])
    assert erf[3] == 0.0 and not np.signbit(erf[3])
    assert erf[4] == 0.0 and np.signbit(erf[4])          # erf(−0) = −0
    assert list(erfc[3:]) == [1.0, 1.0] and list(cdf[3:]) == [0.5, 0.5]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_huge_arguments_raise_no_floating_point_warnings(dtype):
    big = np.finfo(dtype).max
    x = np.array([big, -big, 1e30, -1e30, 50.0, -50.0, np.inf, -np.inf], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        erf, erfc, cdf, pdf = E.erf(x), E.erfc(x), E.normal_cdf(x), E.normal_pdf(x)
    np.testing.assert_array_equal(erf, np.sign(x))
    np.testing.assert_array_equal(erfc, np.where(x > 0, 0.0, 2.0))
    np.testing.assert_array_equal(cdf, np.where(x > 0, 1.0, 0.0))
    np.testing.assert_array_equal(pdf, 0.0)


def test_dtypes_shapes_and_scalars():
    x = np.linspace(-3, 3, 12).reshape(3, 4)
    assert E.erf(x).shape == (3, 4) and E.normal_cdf(x.astype(np.float32)).shape == (3, 4)
    assert E.erf(np.arange(3)).dtype == np.float64              # integers are computed in float64
    assert E.erf(np.float16(0.5)).dtype == np.float16
    assert abs(float(E.erf(np.float16(0.5))) - math.erf(0.5)) <= float(np.spacing(np.float16(0.5)))
    one = E.erf(0.5)
    assert np.ndim(one) == 0 and one == pytest.approx(math.erf(0.5), rel=1e-16)
    assert E.erfc(2) == pytest.approx(math.erfc(2), rel=1e-15)
    assert E.normal_cdf(0) == 0.5 and E.erf([]).shape == (0,)

