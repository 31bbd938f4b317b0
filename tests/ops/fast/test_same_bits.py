"""The speed-ups that live in numformer.ops.fast and not in the reference ops (sums written as
np.add.reduce, arrays reused in place, gradients written into one buffer) change no number: the
fast op's NumPy code gives the reference op's bits."""

import numpy as np
import pytest

from numformer.ops import cross_entropy, layernorm
from numformer.ops import fast
from numformer.ops.fast import dispatch

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("shape", [(3, 5, 16), (1, 1, 7), (9,)], ids=str)
def test_layernorm_numpy_path_gives_the_reference_bits(dtype, shape):
    rng = np.random.default_rng(0)
    x = (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    w, b = rng.standard_normal(shape[-1:]).astype(dtype), rng.standard_normal(shape[-1:]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    with dispatch.overridden(numba=False, mkl=False):
        y_fast, c_fast = fast.layernorm.forward(x, w, b, eps=1e-5)
        g_fast = fast.layernorm.backward(dy, c_fast)
    y_ref, c_ref = layernorm.forward(x, w, b, eps=1e-5)
    g_ref = layernorm.backward(dy, c_ref)
    np.testing.assert_array_equal(y_fast, y_ref)
    np.testing.assert_array_equal(c_fast.rstd, c_ref.rstd)
    for a, r in zip(g_fast, g_ref):
        np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_cross_entropy_in_place_gives_the_reference_bits(dtype):
    rng = np.random.default_rng(1)
    logits = (5.0 * rng.standard_normal((4, 6, 11))).astype(dtype)
    targets = rng.integers(0, 11, size=(4, 6))
    targets[0, :3] = -1
    loss_fast, c_fast = fast.cross_entropy.forward(logits, targets)
    loss_ref, c_ref = cross_entropy.forward(logits, targets)
    assert loss_fast == loss_ref and loss_fast.dtype == loss_ref.dtype
    np.testing.assert_array_equal(fast.cross_entropy.backward(c_fast, 0.5), cross_entropy.backward(c_ref, 0.5))
    assert fast.cross_entropy is not cross_entropy


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_mha_backward_qkv_in_one_buffer_gives_the_bits_of_backward(dtype):
    """The fast backward_qkv writes into one buffer what the fast backward returns as three
    arrays (the fast attention itself matches the reference to rounding: tests/ops/test_table.py)."""
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 5, 12)).astype(dtype) for _ in range(3))
    dy = rng.standard_normal((2, 5, 12)).astype(dtype)
    _, cache = fast.mha.forward(q, k, v, 3, keep_probs=True)
    got = fast.mha.backward_qkv(dy, cache)
    want = np.concatenate(fast.mha.backward(dy, cache), axis=-1)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["float64", "float32", "float16"])
@pytest.mark.parametrize("name", ["erf", "erfc", "normal_cdf", "normal_pdf"])
def test_erf_in_place_gives_the_reference_bits(name, dtype):
    """numformer.ops.fast.erf evaluates numformer.ops.erf's expressions in place, with its choice of
    region as a 0/1 product instead of np.where: the same bits in every region, at every edge,
    and for the special values."""
    from numformer.ops import erf as reference
    from numformer.ops.fast import erf as in_place

    rng = np.random.default_rng(2)
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-310, -1e-310, 0.46875, -0.46875, 0.5, -0.5,
             4.0, -4.0, 11.0, 15.5, -15.5, 27.5, -27.5, 40.0]
    x = np.concatenate([np.linspace(-30.0, 30.0, 60001), 6.0 * rng.standard_normal(20000), edges]).astype(dtype)
    ours, theirs = getattr(in_place, name)(x), getattr(reference, name)(x)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours.view(f"u{ours.itemsize}"), theirs.view(f"u{theirs.itemsize}"))
    for scalar in (0.3, -2.0, np.float32(0.7)):                      # a scalar in, a NumPy scalar out
        a, b = getattr(in_place, name)(scalar), getattr(reference, name)(scalar)
        assert type(a) is type(b) and a == b
