"""What the op table does not cover for lora: frozen base weights, keep_input=False, B = 0."""

import numpy as np
import pytest

from numformer.ops import linear, lora


def _inputs(rng, N=5, c_in=6, c_out=4, r=2):
    return (rng.standard_normal((N, 3, c_in)), rng.standard_normal((c_out, c_in)), rng.standard_normal(c_out),
            rng.standard_normal((r, c_in)), rng.standard_normal((c_out, r)))


def test_frozen_skips_only_the_base_gradients():
    rng = np.random.default_rng(0)
    x, w, b, a, bb = _inputs(rng)
    y, cache = lora.forward(x, w, b, a, bb, alpha=3.0)
    yf, cache_f = lora.forward(x, w, b, a, bb, alpha=3.0, frozen=True)
    dy = rng.standard_normal(y.shape)
    full, frozen = lora.backward(dy, cache), lora.backward(dy, cache_f)
    np.testing.assert_array_equal(y, yf)
    assert frozen[1] is None and frozen[2] is None and full[1] is not None and full[2] is not None
    for i in (0, 3, 4):
        np.testing.assert_array_equal(full[i], frozen[i])


def test_keep_input_false_needs_x_and_gives_the_same_gradients():
    rng = np.random.default_rng(1)
    x, w, b, a, bb = _inputs(rng)
    y, cache = lora.forward(x, w, b, a, bb, alpha=2.0)
    _, lean = lora.forward(x, w, b, a, bb, alpha=2.0, keep_input=False)
    dy = rng.standard_normal(y.shape)
    with pytest.raises(ValueError, match="keep_input"):
        lora.backward(dy, lean)
    for g, h in zip(lora.backward(dy, cache), lora.backward(dy, lean, x=x)):
        np.testing.assert_array_equal(g, h)


def test_zero_b_is_the_plain_linear_map():
    """B starts at zero, so an adapted layer starts as the layer it adapts, bit for bit."""
    rng = np.random.default_rng(2)
    x, w, b, a, bb = _inputs(rng)
    x, w, b, a = (t.astype(np.float32) for t in (x, w, b, a))
    y, _ = lora.forward(x, w, b, a, np.zeros((4, 2), np.float32), alpha=8.0)
    np.testing.assert_array_equal(y, linear.forward(x, w, b)[0])
    assert y.dtype == np.float32


@pytest.mark.parametrize("shapes", [((6, 6), (4, 2)), ((2, 5), (4, 2)), ((0, 6), (4, 0))])
def test_shapes_that_do_not_fit_are_refused(shapes):
    rng = np.random.default_rng(3)
    x, w, b, _, _ = _inputs(rng)
    with pytest.raises(ValueError, match="lora"):
        lora.forward(x, w, b, np.zeros(shapes[0]), np.zeros(shapes[1]))


def test_frozen_linear_gives_only_dx():
    rng = np.random.default_rng(4)
    x, w, b, _, _ = _inputs(rng)
    y, cache = linear.forward(x, w, b)
    yf, cache_f = linear.forward(x, w, b, frozen=True, keep_input=False)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(y, yf)
    dx, dw, db = linear.backward(dy, cache)
    dxf, dwf, dbf = linear.backward(dy, cache_f)          # no x needed: dW is not computed
    np.testing.assert_array_equal(dx, dxf)
    assert dwf is None and dbf is None and dw is not None
