"""Inverted dropout: statistics, determinism, identity cases, backward with the explicit mask."""

import numpy as np
import pytest
import torch

from numformer.ops import dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_kept_fraction_and_mean(p):
    n = 200_000
    x = np.ones(n)
    y, _ = dropout.forward(x, p, np.random.default_rng(0))
    kept = np.count_nonzero(y) / n
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma
    assert abs(y.mean() - 1.0) < 5 * sigma / (1 - p)          # E[y] = x: the 1/(1−p) scale
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-15)


def test_same_seed_same_mask_other_seed_other_mask():
    x = np.random.default_rng(1).standard_normal((8, 16))
    a, _ = dropout.forward(x, 0.5, np.random.default_rng(42))
    b, _ = dropout.forward(x, 0.5, np.random.default_rng(42))
    c, _ = dropout.forward(x, 0.5, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a != 0, c != 0)
    a32, _ = dropout.forward(x.astype(np.float32), 0.5, np.random.default_rng(42))
    np.testing.assert_array_equal(a32 != 0, a != 0)            # the mask does not depend on dtype


def test_backward_uses_the_forward_mask_and_matches_torch():
    rng = np.random.default_rng(2)
    p = 0.3
    x = rng.standard_normal((5, 7)) + 10.0                     # no zeros, so y != 0 is the mask
    y, cache = dropout.forward(x, p, np.random.default_rng(5))
    m = y != 0
    np.testing.assert_allclose(y, x * m / (1 - p), rtol=1e-15)
    dy = rng.standard_normal(x.shape)
    dx = dropout.backward(dy, cache)
    tx = torch.tensor(x, requires_grad=True)
    (tx * torch.tensor(m) / (1 - p) * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-14)


def test_p0_and_eval_are_the_identity():
    x = np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32)
    dy = np.ones_like(x)
    for p, training, rng in [(0.0, True, None), (0.5, False, None), (0.0, True, np.random.default_rng(0))]:
        y, cache = dropout.forward(x, p, rng, training=training)
        assert y is x
        assert dropout.backward(dy, cache) is dy


def test_p1_drops_everything_without_dividing_by_zero():
    x = np.ones((3, 3), dtype=np.float32)
    with np.errstate(all="raise"):
        y, cache = dropout.forward(x, 1.0, np.random.default_rng(0))
        dx = dropout.backward(np.ones_like(x), cache)
    assert y.dtype == np.float32 and np.all(y == 0) and np.all(dx == 0)


def test_bad_arguments():
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dropout.forward(x, -0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        dropout.forward(x, 0.5, None)
