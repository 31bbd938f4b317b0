import math

import numpy as np
import pytest
import torch

from numformer.ops import cross_entropy


def test_all_targets_ignored_gives_zero_loss_and_zero_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 5))
    with np.errstate(all="raise"):
        loss, cache = cross_entropy.forward(logits, np.full((2, 3), -1))
        d = cross_entropy.backward(cache, dloss=2.0)
    assert loss == 0.0 and not np.signbit(loss)
    assert d.shape == logits.shape and np.all(d == 0.0)


def test_ignored_rows_get_zero_gradient_and_do_not_count_in_the_mean():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 4))
    t = np.array([0, -1, 3, -1, 2, 1])
    loss, cache = cross_entropy.forward(logits, t)
    keep = t != -1
    loss2, _ = cross_entropy.forward(logits[keep], t[keep])
    assert loss == pytest.approx(loss2, rel=1e-15)
    d = cross_entropy.backward(cache)
    assert np.all(d[~keep] == 0.0)
    p = np.exp(logits[keep]) / np.exp(logits[keep]).sum(-1, keepdims=True)
    onehot = np.eye(4)[t[keep]]
    np.testing.assert_allclose(d[keep], (p - onehot) / keep.sum(), rtol=1e-13)


def test_dloss_scales_and_dtype_is_kept():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 5)).astype(np.float32)
    loss, cache = cross_entropy.forward(logits, np.array([1, 2, 3]))
    assert loss.dtype == np.float32
    d1 = cross_entropy.backward(cache)
    d3 = cross_entropy.backward(cache, dloss=np.float64(3.0))
    assert d3.dtype == np.float32
    np.testing.assert_allclose(d3, 3 * d1, rtol=1e-6)
    tl = torch.nn.functional.cross_entropy(torch.tensor(logits, dtype=torch.float64), torch.tensor([1, 2, 3]))
    assert float(loss) == pytest.approx(tl.item(), rel=1e-6)


def test_seed_example():
    loss, _ = cross_entropy.forward(np.log(np.array([[0.1, 0.7, 0.2]])), np.array([1]))
    assert float(loss) == pytest.approx(-math.log(0.7), rel=1e-15)


def test_bad_targets():
    logits = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 4\)"):
        cross_entropy.forward(logits, np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="outside"):
        cross_entropy.forward(logits, np.array([[0, 1, 4], [0, 0, 0]]))
    with pytest.raises(ValueError, match="outside"):
        cross_entropy.forward(logits, np.array([[0, 1, -2], [0, 0, 0]]))
    with pytest.raises(ValueError, match="integers"):
        cross_entropy.forward(logits, np.zeros((2, 3)))
