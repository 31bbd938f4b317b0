"""GELU far in the tails, in float64 and float32, for the reference op and the fast one; the
fast op's own erf."""

import math

import numpy as np
import pytest
import torch

from numformer.ops import op_set
from numformer.ops.fast import gelu as fast_gelu


@pytest.fixture(params=["reference", "fast"])
def gelu(request):
    return op_set(request.param).gelu

WIDE = np.concatenate([
    np.linspace(-30.0, 30.0, 60001),
    np.geomspace(1e-300, 1.0, 400), -np.geomspace(1e-300, 1.0, 400),
    [0.0, -0.0, 2.5, -2.5, np.nextafter(2.5, 0), 5.9, 26.5, 1e10, -1e10, 1e300, -1e300],
])


def rel_err(ours, ref):
    ref = np.asarray(ref)
    return np.abs(ours - ref) / np.maximum(np.abs(ref), np.finfo(float).tiny)


def test_erf_matches_math_erf_to_float64_rounding():
    ref = np.array([math.erf(t) for t in WIDE])
    assert rel_err(fast_gelu.erf(WIDE), ref).max() < 2e-15


def test_erfc_matches_math_erfc():
    ours = fast_gelu.erfc(WIDE)
    ref = np.array([math.erfc(t) for t in WIDE])
    normal = ref > 1e-300                             # below that math.erfc is subnormal
    tail = normal & ((WIDE <= 0) | (WIDE >= 2.5))     # computed directly: full accuracy
    assert rel_err(ours[tail], ref[tail]).max() < 2e-15
    assert rel_err(ours[normal], ref[normal]).max() < 5e-12   # 1 − erf for 0 < x < 2.5
    assert np.all(ours[WIDE > 27.3] == 0.0)


def test_erf_special_values_and_dtypes():
    out = fast_gelu.erf(np.array([np.inf, -np.inf, np.nan]))
    assert out[0] == 1.0 and out[1] == -1.0 and np.isnan(out[2])
    assert fast_gelu.erf(np.zeros(3, dtype=np.float32)).dtype == np.float32
    assert fast_gelu.erf(np.arange(3)).dtype == np.float64
    assert fast_gelu.erf(0.5) == pytest.approx(math.erf(0.5), rel=1e-15)
    x32 = np.linspace(-6, 6, 101, dtype=np.float32)
    np.testing.assert_allclose(fast_gelu.erf(x32), [math.erf(t) for t in x32.astype(float)], rtol=1e-6, atol=1e-7)


def exact_reference(x):
    """y = x Φ(x) and dy/dx = Φ(x) + x φ(x) from math.erfc, element by element."""
    phi_cdf = np.array([0.5 * math.erfc(-t / math.sqrt(2)) for t in x])
    pdf = np.array([math.exp(-t * t / 2) / math.sqrt(2 * math.pi) if abs(t) < 40 else 0.0 for t in x])
    return x * phi_cdf, phi_cdf + x * pdf


TAILS = np.array([-1e30, -1e6, -100.0, -40.0, -25.0, -20.0, -8.0, -3.0, 3.0, 8.0, 20.0, 25.0,
                  40.0, 100.0, 1e6, 1e30])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("form", ["tanh", "exact"])
def test_gelu_finite_and_warning_free_in_the_tails(dtype, form, gelu):
    x = np.concatenate([TAILS, [3e38, -3e38]] if dtype == np.float32 else [TAILS, [1.7e308, -1.7e308]])
    x = x.astype(dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, cache = gelu.forward(x, form)
        dx = gelu.backward(np.ones_like(x), cache)
    assert y.dtype == dtype and dx.dtype == dtype
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    big = np.abs(x) >= 20
    np.testing.assert_array_equal(y[big & (x > 0)], x[big & (x > 0)])      # Φ = 1 exactly
    np.testing.assert_array_equal(dx[big & (x > 0)], 1.0)
    assert np.all(np.abs(y[big & (x < 0)]) < 1e-30 * np.abs(x[big & (x < 0)]))
    assert np.all(np.abs(dx[big & (x < 0)]) < 1e-30)


def test_gelu_exact_tails_match_math(gelu):
    x = np.concatenate([TAILS[np.abs(TAILS) < 1e10], np.linspace(-12, 12, 97)])
    y, cache = gelu.forward(x, "exact")
    dx = gelu.backward(np.ones_like(x), cache)
    y_ref, dx_ref = exact_reference(x)
    # relative accuracy even where Φ(x) is tiny (Φ(−20) ≈ 2.8e−89)
    assert rel_err(y, y_ref).max() < 1e-11
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-11, atol=1e-300)


def test_gelu_tanh_tails_match_torch_and_math():
    """The fast op's float64 gate keeps ~1e−261 at x = −20, where ½ (1 + tanh u) is 0."""
    gelu = fast_gelu
    x = TAILS[np.abs(TAILS) <= 100]
    y, cache = gelu.forward(x, "tanh")
    dx = gelu.backward(np.ones_like(x), cache)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.gelu(tx, approximate="tanh")
    ty.sum().backward()
    # torch's 1 + tanh(u) cancels to 0 for x << 0 where ours keeps ~1e−261: compare on |x|'s scale
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-14, atol=1e-13)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-13, atol=1e-13)
    u = math.sqrt(2 / math.pi) * (-20 + 0.044715 * -8000)
    assert y[TAILS[np.abs(TAILS) <= 100] == -20.0][0] == pytest.approx(-20 / (1 + math.exp(-2 * u)), rel=1e-12)


def test_the_articles_example_gelu_of_one(gelu):
    y, _ = gelu.forward(np.array([1.0]))
    assert round(float(y[0]), 3) == 0.841
    y, _ = gelu.forward(np.array([1.0]), form="exact")
    assert float(y[0]) == pytest.approx(0.5 * (1 + math.erf(1 / math.sqrt(2))), rel=1e-15)


def test_gelu_rejects_unknown_form(gelu):
    with pytest.raises(ValueError, match="form"):
        gelu.forward(np.ones(2), form="sigmoid")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["tanh", "exact"])
def test_output_and_slope_is_forward_bit_for_bit_and_the_torch_derivative(dtype, form, gelu):
    """The GPT drops GELU's output after forward and gets it back from output_and_slope; it must be
    the very same numbers, and the slope must be the derivative backward uses (chunks of 1000 so
    that the fast op's chunked loop is crossed)."""
    sizes = {"chunk": 1000} if gelu is fast_gelu else {}
    x = np.random.default_rng(3).normal(0, 3, size=(7, 613)).astype(dtype)
    x[0, :5] = [-30.0, -9.0, 0.0, 9.0, 30.0]
    y, cache = gelu.forward(x, form, **sizes)
    y2, slope = gelu.output_and_slope(cache)
    np.testing.assert_array_equal(y2, y)
    dy = np.random.default_rng(4).normal(size=x.shape).astype(dtype)
    np.testing.assert_array_equal(dy * slope, gelu.backward(dy, cache))
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    torch.nn.functional.gelu(tx, approximate={"tanh": "tanh", "exact": "none"}[form]).sum().backward()
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(slope, tx.grad.numpy(), rtol=tol, atol=tol)
