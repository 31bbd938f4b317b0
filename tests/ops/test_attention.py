"""attention beyond the op table: empty rows, masks, KV-cache alignment, dropout, for the
reference ops and the fast ones alike (multi-head attention: test_mha.py)."""

import math

import numpy as np
import pytest
import torch

from numformer.ops import dropout, op_set


@pytest.fixture(params=["reference", "fast"])
def ops(request):
    return op_set(request.param)


@pytest.fixture
def attention(ops):
    return ops.attention


def rand(rng, *shape):
    return rng.standard_normal(shape)


def test_row_with_no_allowed_key_is_zero_and_passes_zero_gradient(attention):
    rng = np.random.default_rng(0)
    q, k, v = rand(rng, 2, 4, 3), rand(rng, 2, 5, 3), rand(rng, 2, 5, 2)
    mask = np.ones((2, 4, 5), dtype=bool)
    mask[1, 2] = False                                       # query 2 of batch 1 sees nothing
    dy = rand(rng, 2, 4, 2)
    with np.errstate(all="raise", under="ignore"):           # no 0/0, no inf - inf
        y, cache = attention.forward(q, k, v, mask=mask)
        dq, dk, dv = attention.backward(dy, cache)
    assert np.all(y[1, 2] == 0.0)
    assert np.all(dq[1, 2] == 0.0)
    for g in (y, dq, dk, dv):
        assert np.all(np.isfinite(g))
    # k and v get nothing from the empty row: same gradients as with that query removed
    keep = [0, 1, 3]
    y2, c2 = attention.forward(q[1:, keep], k[1:], v[1:], mask=mask[1:, keep])
    _, dk2, dv2 = attention.backward(dy[1:, keep], c2)
    np.testing.assert_allclose(dk[1:], dk2, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dv[1:], dv2, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(y[1:, keep], y2, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("keep_probs", [True, False])
def test_no_keys_at_all_gives_zeros(keep_probs, attention):
    """Tk = 0 (an empty context): every query row sees no key, so y and every gradient are 0."""
    rng = np.random.default_rng(7)
    q, k, v = rand(rng, 2, 3, 4), rand(rng, 2, 0, 4), rand(rng, 2, 0, 5)
    with np.errstate(all="raise"):
        y, cache = attention.forward(q, k, v, keep_probs=keep_probs)
        dq, dk, dv = attention.backward(rand(rng, 2, 3, 5), cache)
    assert y.shape == (2, 3, 5) and np.all(y == 0.0) and np.all(dq == 0.0)
    assert dk.shape == k.shape and dv.shape == v.shape


def test_everything_masked_gives_zeros_not_nan(attention):
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, 3, 4), rand(rng, 3, 4), rand(rng, 3, 4)
    with np.errstate(all="raise", under="ignore"):
        y, cache = attention.forward(q, k, v, mask=np.zeros((3, 3), dtype=bool))
        grads = attention.backward(rand(rng, 3, 4), cache)
    assert np.all(y == 0.0)
    assert all(np.all(g == 0.0) for g in grads)


def test_mask_is_minus_inf_not_a_large_finite_number(attention):
    """A masked key with an enormous score must still get exactly zero weight (a finite -1e4
    added to a score of 1e6 would not hide it)."""
    rng = np.random.default_rng(2)
    q = np.ones((1, 2)) * 1000.0
    k = np.concatenate([rand(rng, 3, 2) * 0.001, np.full((1, 2), 1000.0)])   # last key: score 1e6
    v = rand(rng, 4, 3)
    mask = np.array([[True, True, True, False]])
    y, _ = attention.forward(q, k, v, mask=mask)
    y_ref, _ = attention.forward(q, k[:3], v[:3])
    np.testing.assert_allclose(y, y_ref, rtol=1e-14)


def test_large_scores_stay_finite_and_match_torch(attention):
    """Scores around 800 (exp would overflow without the max-subtraction), close to each other so
    the softmax is not one-hot."""
    rng = np.random.default_rng(10)
    q, k = 20 + 0.1 * rand(rng, 2, 3, 4), 20 + 0.1 * rand(rng, 2, 5, 4)
    v = rand(rng, 2, 5, 3)
    with np.errstate(all="raise", under="ignore"):
        y, cache = attention.forward(q, k, v, causal=True)
        dy = rand(rng, *y.shape)
        dq, dk, dv = attention.backward(dy, cache)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    mask = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=2)
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask)
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9)
    for ours, t in ((dq, tq), (dk, tk), (dv, tv)):
        g = t.grad.numpy()
        np.testing.assert_allclose(ours, g, rtol=1e-8, atol=1e-10 * np.abs(g).max())


@pytest.mark.parametrize("Tq,Tk", [(1, 6), (3, 7), (5, 5)])
def test_causal_with_fewer_queries_is_the_tail_of_full_causal_attention(Tq, Tk, attention):
    """KV-cache alignment: the last Tq queries against all Tk keys give the last Tq rows of
    causal self-attention over the whole sequence."""
    rng = np.random.default_rng(Tq * 10 + Tk)
    q_all, k, v = rand(rng, 2, Tk, 4), rand(rng, 2, Tk, 4), rand(rng, 2, Tk, 3)
    y_all, _ = attention.forward(q_all, k, v, causal=True)
    y_tail, _ = attention.forward(q_all[:, Tk - Tq:], k, v, causal=True)
    np.testing.assert_allclose(y_tail, y_all[:, Tk - Tq:], rtol=1e-13)


def test_causal_equals_explicit_bottom_right_mask_and_combines_with_mask(attention):
    rng = np.random.default_rng(3)
    Tq, Tk = 3, 6
    q, k, v = rand(rng, 2, Tq, 4), rand(rng, 2, Tk, 4), rand(rng, 2, Tk, 4)
    explicit = np.array([[j <= Tk - Tq + i for j in range(Tk)] for i in range(Tq)])
    pad = rng.random((2, 1, Tk)) < 0.7
    pad[..., 0] = True
    y1, _ = attention.forward(q, k, v, causal=True, mask=pad)
    y2, _ = attention.forward(q, k, v, mask=explicit & pad)
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("rows", [2, 64])
def test_attention_dropout_matches_torch_with_the_same_mask(rows, ops):
    """rows = 2 takes the fast op's causal query rows in chunks (see query_chunks)."""
    sizes = {"qrows": rows} if ops.__name__.endswith("fast") else {}
    attention = ops.attention
    rng = np.random.default_rng(4)
    q, k, v = rand(rng, 2, 2, 5, 4), rand(rng, 2, 2, 5, 4), rand(rng, 2, 2, 5, 3)
    p = 0.3
    y, cache = attention.forward(q, k, v, causal=True, dropout_p=p, rng=np.random.default_rng(9), **sizes)
    dy = rand(rng, *y.shape)
    dq, dk, dv = attention.backward(dy, cache)
    # the mask the op drew, drawn again from the same seed
    keep = dropout.keep_mask((2, 2, 5, 5), p, np.random.default_rng(9))
    assert 0 < keep.sum() < keep.size
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    s = (tq @ tk.transpose(-1, -2) / math.sqrt(4)).masked_fill(~torch.ones(5, 5).tril().bool(), -math.inf)
    ty = (torch.softmax(s, -1) * torch.tensor(keep) / (1 - p)) @ tv
    (ty * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    for ours, t in ((dq, tq), (dk, tk), (dv, tv)):
        np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_attention_dropout_same_seed_same_output_and_p1_is_zero(attention):
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, 2, 4, 3), rand(rng, 2, 4, 3), rand(rng, 2, 4, 3)
    a, _ = attention.forward(q, k, v, dropout_p=0.5, rng=np.random.default_rng(1))
    b, _ = attention.forward(q, k, v, dropout_p=0.5, rng=np.random.default_rng(1))
    c, _ = attention.forward(q, k, v, dropout_p=0.5, rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with np.errstate(all="raise"):
        y, cache = attention.forward(q, k, v, dropout_p=1.0, rng=np.random.default_rng(1))
        grads = attention.backward(np.ones_like(y), cache)
    assert np.all(y == 0.0) and all(np.all(g == 0.0) for g in grads)


def test_attention_bad_arguments(attention):
    rng = np.random.default_rng(6)
    q, k, v = rand(rng, 2, 3, 4), rand(rng, 2, 5, 4), rand(rng, 2, 5, 6)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 5, 3\)"):
        attention.forward(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"\(2, 5, 4\).*\(2, 4, 6\)"):
        attention.forward(q, k, v[:, :4])
    with pytest.raises(ValueError, match="boolean"):
        attention.forward(q, k, v, mask=np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 3, 5\)"):
        attention.forward(q, k, v, mask=np.ones((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="rng"):
        attention.forward(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attention.forward(q, k, v, dropout_p=1.5, rng=np.random.default_rng(0))
