import numpy as np
import torch

from numformer.ops import softmax


def test_softmax_extreme_values_no_overflow():
    x = np.array([[1000.0, -1000.0, 0.0], [-800.0, -801.0, -2000.0], [710.0, 709.0, 1e300]])
    with np.errstate(all="raise", under="ignore"):
        y, cache = softmax.forward(x)
        dx = softmax.backward(np.array([[1.0, 2.0, 3.0]] * 3), cache)
    np.testing.assert_allclose(y, torch.softmax(torch.tensor(x), -1).numpy(), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-15)
    assert np.all(np.isfinite(dx))


def test_softmax_minus_inf_entries_get_zero_probability():
    x = np.array([[0.5, -np.inf, 1.5, -np.inf]])
    y, cache = softmax.forward(x)
    assert y[0, 1] == 0.0 and y[0, 3] == 0.0
    dx = softmax.backward(np.array([[1.0, 5.0, -2.0, 7.0]]), cache)
    assert dx[0, 1] == 0.0 and dx[0, 3] == 0.0


def test_seed_example():
    y, _ = softmax.forward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(np.round(y, 3), [0.090, 0.245, 0.665])
