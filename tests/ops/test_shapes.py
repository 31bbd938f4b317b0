"""Shape mismatches raise ValueError naming both shapes; other small contracts of the ops."""

import re

import numpy as np
import pytest

from numformer.ops import (attention, cross_entropy, embedding, gelu, layernorm, linear, mha,
                           residual, rmsnorm, softmax, swiglu)

z = np.zeros


def names_both(a, b):
    return re.escape(str(a)) + ".*" + re.escape(str(b))


@pytest.mark.parametrize("call,a,b", [
    (lambda: linear.forward(z((2, 3)), z((4, 5))), (2, 3), (4, 5)),
    (lambda: linear.forward(z((2, 5)), z((4, 5)), z(3)), (3,), (4, 5)),
    (lambda: linear.forward(z((2, 5)), z(5)), (2, 5), (5,)),
    (lambda: linear.backward(z((2, 3)), linear.forward(z((2, 5)), z((4, 5)))[1]), (2, 3), (2, 4)),
    (lambda: layernorm.forward(z((2, 3)), z(4), z(3)), (2, 3), (4,)),
    (lambda: layernorm.backward(z((2, 4)), layernorm.forward(z((2, 3)), z(3), z(3))[1]), (2, 4), (2, 3)),
    (lambda: attention.forward(z((2, 3, 4)), z((2, 5, 3)), z((2, 5, 4))), (2, 3, 4), (2, 5, 3)),
    (lambda: attention.forward(z((2, 3, 4)), z((3, 5, 4)), z((3, 5, 4))), (2, 3, 4), (3, 5, 4)),
    (lambda: mha.forward(z((1, 2, 4)), z((1, 3, 4)), z((1, 2, 4)), 2), (1, 2, 4), (1, 3, 4)),
    (lambda: residual.forward(z((2, 3)), z((3, 2))), (2, 3), (3, 2)),
    (lambda: residual.backward(z((2, 2)), residual.forward(z((2, 3)), z((2, 3)))[1]), (2, 2), (2, 3)),
    (lambda: cross_entropy.forward(z((2, 5)), z(3, dtype=int)), (2, 5), (3,)),
    (lambda: softmax.backward(z((2, 2)), softmax.forward(z((2, 3)))[1]), (2, 2), (2, 3)),
    (lambda: gelu.backward(z((2, 2)), gelu.forward(z((2, 3)))[1]), (2, 2), (2, 3)),
    (lambda: rmsnorm.forward(z((2, 3)), z(4)), (2, 3), (4,)),
    (lambda: rmsnorm.backward(z((2, 4)), rmsnorm.forward(z((2, 3)), z(3))[1]), (2, 4), (2, 3)),
    (lambda: swiglu.forward(z((2, 3)), z((2, 4))), (2, 3), (2, 4)),
    (lambda: swiglu.backward(z((2, 4)), swiglu.forward(z((2, 3)), z((2, 3)))[1]), (2, 4), (2, 3)),
    (lambda: attention.forward(z((2, 3, 3, 4)), z((2, 2, 5, 4)), z((2, 2, 5, 4))), (2, 3, 3, 4), (2, 2, 5, 4)),
    (lambda: embedding.backward(z((2, 3)), embedding.forward(np.array([0, 1]), z((4, 5)))[1]), (2, 3), (2, 5)),
])
def test_shape_mismatch_names_both_shapes(call, a, b):
    with pytest.raises(ValueError, match=names_both(a, b)):
        call()


def test_embedding_rejects_bad_ids():
    table = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        embedding.forward(np.array([0, 4]), table)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        embedding.forward(np.array([-1, 2]), table)
    with pytest.raises(ValueError, match="integers"):
        embedding.forward(np.array([0.0, 1.0]), table)


def test_residual_backward_fans_dy_out_to_both_inputs():
    dy = np.arange(6.0).reshape(2, 3)
    _, cache = residual.forward(np.ones((2, 3)), np.ones((2, 3)))
    dx, dfx = residual.backward(dy, cache)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_array_equal(dfx, dy)


def test_linear_keeps_float32():
    x = np.ones((2, 3, 4), dtype=np.float32)
    y, cache = linear.forward(x, np.ones((5, 4), dtype=np.float32), np.ones(5, dtype=np.float32))
    grads = linear.backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)


def test_linear_without_kept_input_needs_x_back_and_then_matches():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 4)), rng.normal(size=5)
    y, cache = linear.forward(x, w, b)
    y2, lean = linear.forward(x, w, b, keep_input=False)
    np.testing.assert_array_equal(y2, y)
    assert lean[0] is None                      # the input really is not kept
    dy = rng.normal(size=y.shape)
    for ours, ref in zip(linear.backward(dy, lean, x=x), linear.backward(dy, cache)):
        np.testing.assert_array_equal(ours, ref)
    with pytest.raises(ValueError, match="keep_input=False"):
        linear.backward(dy, lean)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        linear.backward(dy, lean, x=x[:, :2])


@pytest.mark.parametrize("affine", ["both", "weight only", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_output_is_forwards_output_bit_for_bit(affine, dtype):
    """The GPT drops LayerNorm's output after the next linear map and gets it back from the cache."""
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(2, 5, 8)).astype(dtype)
    w = rng.normal(size=8).astype(dtype) if affine != "none" else None
    b = rng.normal(size=8).astype(dtype) if affine == "both" else None
    y, cache = layernorm.forward(x, w, b)
    again = layernorm.output(cache)
    assert again is not y
    np.testing.assert_array_equal(again, y)
