"""mha beyond the op table: heads as independent attention calls on GPT-2's column split, the KV
cache (token by token equals the whole sequence), backward into given arrays, bad arguments;
for the reference ops and the fast ones alike."""

import math

import numpy as np
import pytest

from numformer.ops import mha as reference_mha
from numformer.ops import op_set


@pytest.fixture(params=["reference", "fast"])
def mha(request):
    return op_set(request.param).mha


def qkv(rng, B, T, C):
    return tuple(rng.standard_normal((B, T, C)) for _ in range(3))


def test_heads_are_independent_attention_calls_on_column_blocks(mha):
    """Head h is attention on columns h·hs:(h+1)·hs of q, k and v, and y puts its output in the
    same columns (GPT-2's split), written here with plain NumPy."""
    rng = np.random.default_rng(8)
    B, T, C, nh = 2, 4, 6, 3
    hs = C // nh
    q, k, v = qkv(rng, B, T, C)
    y, _ = mha.forward(q, k, v, nh)
    for h in range(nh):
        cols = slice(h * hs, (h + 1) * hs)
        s = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / math.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(y[..., cols], p @ v[..., cols], rtol=1e-12)


def test_views_of_one_fused_projection_are_taken_as_they_are(mha):
    """q, k, v as the three column blocks of one (B, T, 3C) array, as the GPT passes c_attn's
    output: the same result as contiguous copies."""
    rng = np.random.default_rng(9)
    fused = rng.standard_normal((2, 5, 24))
    views = np.split(fused, 3, axis=-1)
    y, _ = mha.forward(*views, 4)
    y_copies, _ = mha.forward(*(np.ascontiguousarray(a) for a in views), 4)
    np.testing.assert_array_equal(y, y_copies)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kv_cache_token_by_token_equals_the_whole_sequence(mha, dtype):
    """A prompt of 3 positions, then one position at a time, through a KV cache: the outputs of
    the whole causal sequence, and the cache holds every position's keys and values."""
    rng = np.random.default_rng(10)
    B, T, C, nh = 2, 7, 8, 2
    q, k, v = (a.astype(dtype) for a in qkv(rng, B, T, C))
    want, _ = mha.forward(q, k, v, nh)
    K, V = np.zeros((B, nh, 16, C // nh), dtype), np.zeros((B, nh, 16, C // nh), dtype)
    parts = [mha.forward(q[:, :3], k[:, :3], v[:, :3], nh, kv=(K, V, 0))[0]]
    for t in range(3, T):
        parts.append(mha.forward(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], nh, causal=False, kv=(K, V, t))[0])
    got = np.concatenate(parts, axis=1)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(K[:, :, :T], reference_mha.split_heads(k, nh))
    np.testing.assert_array_equal(V[:, :, :T], reference_mha.split_heads(v, nh))
    assert not K[:, :, T:].any()


def test_no_backward_through_earlier_cached_positions(mha):
    rng = np.random.default_rng(11)
    q, k, v = qkv(rng, 1, 1, 4)
    K, V = np.zeros((1, 2, 8, 2)), np.zeros((1, 2, 8, 2))
    y, cache = mha.forward(q, k, v, 2, causal=False, kv=(K, V, 3))
    with pytest.raises(ValueError, match="KV cache"):
        mha.backward(np.ones_like(y), cache)


def test_backward_qkv_is_the_three_gradients_side_by_side(mha):
    """backward_qkv (the GPT's call: the gradient of the fused c_attn) is dq, dk and dv of backward
    as the three column blocks of one (B, T, 3C) array, with the same numbers."""
    rng = np.random.default_rng(12)
    B, T, C = 2, 5, 8
    q, k, v = qkv(rng, B, T, C)
    y, cache = mha.forward(q, k, v, 2, keep_probs=True)
    dy = rng.standard_normal(y.shape)
    dq, dk, dv = mha.backward(dy, cache)
    dqkv = mha.backward_qkv(dy, cache)
    assert dqkv.shape == (B, T, 3 * C)
    np.testing.assert_array_equal(dqkv[..., :C], dq)
    np.testing.assert_array_equal(dqkv[..., C:2 * C], dk)
    np.testing.assert_array_equal(dqkv[..., 2 * C:], dv)


def test_bad_arguments(mha):
    rng = np.random.default_rng(7)
    q, k, v = qkv(rng, 2, 3, 8)
    with pytest.raises(ValueError, match="divisible"):
        mha.forward(q, k, v, n_head=3)
    with pytest.raises(ValueError, match=r"\(2, 3, 8\).*\(2, 3, 6\)"):
        mha.forward(q, k[..., :6], v, n_head=2)
    with pytest.raises(ValueError, match="three"):
        mha.forward(q[0], k[0], v[0], n_head=2)


def test_split_heads_is_a_view_and_merge_heads_its_inverse():
    a = np.arange(2 * 3 * 12.0).reshape(2, 3, 12)
    heads = reference_mha.split_heads(a, 4)                   # (2, 4, 3, 3)
    assert heads.shape == (2, 4, 3, 3) and np.shares_memory(heads, a)
    np.testing.assert_array_equal(heads[1, 2, 0], a[1, 0, 6:9])
    np.testing.assert_array_equal(reference_mha.merge_heads(heads), a)


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_grouped_query_heads_read_their_shared_key_value_head(mha, n_kv_head):
    """Query head h attends with key/value head h // (nh / nkv), written here with plain NumPy
    on the column blocks; nkv = nh is ordinary multi-head attention."""
    rng = np.random.default_rng(13)
    B, T, nh, hs = 2, 5, 4, 3
    q = rng.standard_normal((B, T, nh * hs))
    k, v = rng.standard_normal((B, T, n_kv_head * hs)), rng.standard_normal((B, T, n_kv_head * hs))
    y, _ = mha.forward(q, k, v, nh, n_kv_head=n_kv_head)
    for h in range(nh):
        j = h // (nh // n_kv_head)
        qc, kc = slice(h * hs, (h + 1) * hs), slice(j * hs, (j + 1) * hs)
        s = q[..., qc] @ k[..., kc].transpose(0, 2, 1) / math.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(y[..., qc], p @ v[..., kc], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kv_cache_with_grouped_heads_and_rope_holds_only_the_kv_heads(mha, dtype):
    """Grouped-query attention with RoPE through a KV cache of the n_kv_head heads, one position
    at a time: the whole sequence's outputs, and the cache holds the rotated keys."""
    rng = np.random.default_rng(14)
    B, T, nh, nkv, hs = 2, 7, 4, 2, 4
    q = rng.standard_normal((B, T, nh * hs)).astype(dtype)
    k, v = (rng.standard_normal((B, T, nkv * hs)).astype(dtype) for _ in range(2))
    want, _ = mha.forward(q, k, v, nh, n_kv_head=nkv, rope_theta=10_000.0)
    K, V = np.zeros((B, nkv, 16, hs), dtype), np.zeros((B, nkv, 16, hs), dtype)
    parts = [mha.forward(q[:, :3], k[:, :3], v[:, :3], nh, kv=(K, V, 0), n_kv_head=nkv, rope_theta=10_000.0)[0]]
    for t in range(3, T):
        parts.append(mha.forward(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], nh, causal=False, kv=(K, V, t),
                                 n_kv_head=nkv, rope_theta=10_000.0)[0])
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(np.concatenate(parts, axis=1), want, rtol=tol, atol=tol)
    rotated, _ = op_set("reference").rope.forward(reference_mha.split_heads(k, nkv), 10_000.0)
    np.testing.assert_allclose(K[:, :, :T], rotated, rtol=tol, atol=tol)
    np.testing.assert_array_equal(V[:, :, :T], reference_mha.split_heads(v, nkv))


def test_bad_grouped_query_arguments(mha):
    rng = np.random.default_rng(15)
    q = rng.standard_normal((2, 3, 12))
    with pytest.raises(ValueError, match="not divisible by n_kv_head = 4"):
        mha.forward(q, q[..., :4], q[..., :4], n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match=r"\(2, 3, 12\).*\(2, 3, 6\).*width 4"):
        mha.forward(q, q[..., :6], q[..., :6], n_head=6, n_kv_head=2)
