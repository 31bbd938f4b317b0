"""clip_grad_norm against torch.nn.utils.clip_grad_norm_ and against np.linalg.norm."""

import numpy as np
import pytest
import torch

from numformer.optim import clip_grad_norm


def _grads(seed, scale):
    rng = np.random.default_rng(seed)
    return {
        "a": scale * rng.standard_normal((4, 6)),
        "b": scale * rng.standard_normal(5),
        "c": scale * rng.standard_normal((2, 3, 3)),
    }


@pytest.mark.parametrize("scale,max_norm", [(3.0, 1.0), (0.01, 1.0), (1.0, 0.25)])
def test_dict_matches_torch(scale, max_norm):
    grads = _grads(0, scale)
    tensors = []
    for g in grads.values():
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(g)
        tensors.append(t)
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    norm = clip_grad_norm(grads, max_norm)
    assert isinstance(norm, float)
    np.testing.assert_allclose(norm, expected_norm, rtol=1e-13)
    for g, t in zip(grads.values(), tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("clipped", [True, False])
def test_flat_matches_independent_norm(clipped):
    rng = np.random.default_rng(1)
    g = rng.standard_normal(1000)
    g0 = g.copy()
    expected_norm = np.linalg.norm(g0)  # about 31.6
    max_norm = 5.0 if clipped else 100.0
    norm = clip_grad_norm(g, max_norm)
    np.testing.assert_allclose(norm, expected_norm, rtol=1e-13)
    if clipped:
        np.testing.assert_allclose(g, g0 * max_norm / (expected_norm + 1e-6), rtol=1e-14)
        np.testing.assert_allclose(np.linalg.norm(g), max_norm, rtol=1e-6)
    else:
        np.testing.assert_array_equal(g, g0)


def test_dict_norm_is_the_global_norm_over_all_arrays():
    grads = _grads(2, 2.0)
    concat = np.concatenate([g.reshape(-1) for g in grads.values()])
    expected = np.linalg.norm(concat)
    ratio = {k: g.copy() for k, g in grads.items()}
    norm = clip_grad_norm(grads, 1.0)
    np.testing.assert_allclose(norm, expected, rtol=1e-13)
    for k in grads:  # one common scale factor, the direction is kept
        np.testing.assert_allclose(grads[k], ratio[k] / (expected + 1e-6), rtol=1e-14)


def test_float32_stays_float32_and_survives_squares_that_overflow():
    g = np.full(100, 1e20, dtype=np.float32)  # g_i² = 1e40 overflows float32, ‖g‖ = 1e21 fits
    norm = clip_grad_norm(g, 1.0)
    np.testing.assert_allclose(norm, 1e21, rtol=1e-6)
    assert g.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(g.astype(np.float64)), 1.0, rtol=1e-5)


def test_nan_gradient_propagates_like_torch():
    g = np.array([1.0, np.nan, 2.0])
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t.grad = torch.tensor(g)
    torch_norm = torch.nn.utils.clip_grad_norm_([t], 1.0).item()
    norm = clip_grad_norm(g, 1.0)
    assert np.isnan(norm) and np.isnan(torch_norm)
    assert np.isnan(g).all() and torch.isnan(t.grad).all()
