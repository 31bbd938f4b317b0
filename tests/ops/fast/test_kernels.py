"""The compiled float32 kernels (numformer.ops.fast.kernels): their exp and Φ against float64 on
dense grids and at the edges, GELU, LayerNorm, RMSNorm and SwiGLU against PyTorch in float64, the softmax rows
against float64, the Adam update against NumPy's bits, NaN passing through, and the NumPy code
that runs when they are off. (The fast ops' equality with the reference, with the kernels on and
off, is in tests/ops/test_table.py; the switches themselves in test_dispatch.py.) numba is in
the test extras, so these always run."""

import math

import numpy as np
import pytest
import torch

from numformer import optim
from numformer.ops import attention as reference_attention
from numformer.ops.fast import attention, dispatch, gelu, kernels, layernorm, rmsnorm, swiglu
from numformer.ops.fast.dispatch import NUMBA, NUMPY


@pytest.fixture(autouse=True)
def kernels_on():
    """The kernels on, whatever NUMFORMER_JIT says (numba is in the test extras)."""
    with dispatch.overridden(numba=True) as decision:
        assert decision.kernels is kernels, "numba is in the test extras: the kernels must load"
        yield


def ulps(got, want):
    """|got − want| in units of float32's spacing at want (want in float64)."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def test_exp_within_two_ulp_and_its_edges():
    """exp, on which both GELU gates and the attention softmax rest."""
    x = np.linspace(-87.0, 88.0, 3_000_001).astype(np.float32)
    out = np.empty_like(x)
    kernels.exp_array(x, out)
    assert ulps(out, np.exp(x.astype(np.float64))).max() <= 2.0
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, -87.5, -100.0, -np.inf, 88.5, np.inf, np.nan], np.float32)
    out = np.empty_like(edges)
    kernels.exp_array(edges, out)
    assert out[:4].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert out[4:7].tolist() == [0.0, 0.0, 0.0]          # below −87: 0 (no subnormals)
    assert out[7:9].tolist() == [np.inf, np.inf]
    assert np.isnan(out[9])


def test_normal_cdf_within_nine_ulp_in_both_tails_and_its_edges():
    """The exact GELU's gate Φ, relatively accurate also where it is tiny (x ≪ 0)."""
    x = np.linspace(-13.0, 6.0, 1_000_001).astype(np.float32)
    out = np.empty_like(x)
    kernels.normal_cdf_array(x, out)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    assert ulps(out, want).max() <= 9.0
    edges = np.array([0.0, -0.0, -16.0, 16.0, np.inf, -np.inf, np.nan], np.float32)
    out = np.empty_like(edges)
    kernels.normal_cdf_array(edges, out)
    assert out[:6].tolist() == [0.5, 0.5, 0.0, 1.0, 1.0, 0.0]
    assert np.isnan(out[6])


@pytest.mark.parametrize("form", ["tanh", "exact"])
def test_gelu_kernels_against_torch(form):
    x = np.random.default_rng(0).normal(0, 3, size=(64, 1000)).astype(np.float32)
    x[0, :8] = [-40.0, -12.0, -5.0, -1e-20, 0.0, 1e-20, 12.0, 1e6]
    y, cache = gelu.forward(x, form)
    y2, slope = gelu.output_and_slope(cache)
    dy = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    dx = gelu.backward(dy, cache)
    assert y.dtype == slope.dtype == dx.dtype == np.float32
    np.testing.assert_array_equal(y2, y)                  # forward's output again, bit for bit
    np.testing.assert_array_equal(dx, dy * slope)
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty = torch.nn.functional.gelu(tx, approximate={"tanh": "tanh", "exact": "none"}[form])
    ty.sum().backward()
    # absolute on the scale of x, as float32 rounding of x itself is
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(slope, tx.grad.numpy(), rtol=2e-6, atol=2e-6)
    assert y[0, 6] == 12.0 and y[0, 7] == 1e6             # the gate is exactly 1 for large x
    assert y[0, 0] == 0.0 and y[0, 4] == 0.0


@pytest.mark.parametrize("form", ["tanh", "exact"])
def test_gelu_kernels_pass_nan_and_inf(form):
    x = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    y, cache = gelu.forward(x, form)
    _, slope = gelu.output_and_slope(cache)
    assert np.isnan(y[0]) and np.isnan(slope[0])
    assert y[1] == np.inf and np.isnan(y[2])           # −inf · Φ(−inf) = −inf · 0, as in NumPy
    assert y[3] == pytest.approx(0.8413, abs=1e-3)


def test_layernorm_kernels_against_torch():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(3, 50, 384)) * 4 + 7).astype(np.float32)
    w, b = rng.normal(size=384).astype(np.float32), rng.normal(size=384).astype(np.float32)
    y, cache = layernorm.forward(x, w, b, eps=1e-5)
    np.testing.assert_array_equal(layernorm.output(cache), y)
    dy = rng.normal(size=x.shape).astype(np.float32)
    dx, dw, db = layernorm.backward(dy, cache)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32
    t = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w, b)]
    ty = torch.nn.functional.layer_norm(t[0], (384,), t[1], t[2], eps=1e-5)
    (ty * torch.tensor(dy.astype(np.float64))).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    for ours, theirs in zip((dx, dw, db), t):
        scale = np.abs(theirs.grad.numpy()).max()
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-4, atol=1e-5 * scale)


def test_rmsnorm_kernels_against_torch():
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(3, 50, 384)) * 4 + 7).astype(np.float32)
    w = rng.normal(size=384).astype(np.float32)
    y, cache = rmsnorm.forward(x, w, eps=1e-5)
    assert dispatch.runs("rmsnorm", x, w) == NUMBA
    np.testing.assert_array_equal(rmsnorm.output(cache), y)          # forward's output again, bit for bit
    dy = rng.normal(size=x.shape).astype(np.float32)
    dx, dw = rmsnorm.backward(dy, cache)
    assert y.dtype == dx.dtype == dw.dtype == np.float32
    t = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w)]
    ty = torch.nn.functional.rms_norm(t[0], (384,), t[1], eps=1e-5)
    (ty * torch.tensor(dy.astype(np.float64))).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    for ours, theirs in zip((dx, dw), t):
        scale = np.abs(theirs.grad.numpy()).max()
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-4, atol=1e-5 * scale)


def test_swiglu_kernels_against_torch_in_both_tails():
    rng = np.random.default_rng(4)
    g = np.concatenate([rng.normal(0, 3, 5000), rng.uniform(-120, 120, 1000)]).astype(np.float32)
    u = rng.normal(size=g.shape).astype(np.float32)
    h, cache = swiglu.forward(g, u)
    assert dispatch.runs("swiglu", g, u) == NUMBA
    np.testing.assert_array_equal(swiglu.output(cache), h)            # forward's output again, bit for bit
    dh = rng.normal(size=g.shape).astype(np.float32)
    dg, du = swiglu.backward(dh, cache)
    assert h.dtype == dg.dtype == du.dtype == np.float32 and np.isfinite(dg).all()
    tg, tu = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (g, u))
    th = torch.nn.functional.silu(tg) * tu
    (th * torch.tensor(dh.astype(np.float64))).sum().backward()
    np.testing.assert_allclose(h, th.detach().numpy(), rtol=1e-5, atol=1e-30)
    # SiLU′ crosses 0 near g = −1.28, where float32 cancels: there the error is absolute
    np.testing.assert_allclose(dg, tg.grad.numpy(), rtol=1e-5, atol=1e-6 * np.abs(tg.grad.numpy()).max())
    np.testing.assert_allclose(du, tu.grad.numpy(), rtol=1e-5, atol=1e-30)


def test_layernorm_kernel_passes_nan():
    x = np.ones((2, 8), np.float32)
    x[0, 3] = np.nan
    y, _ = layernorm.forward(x, np.ones(8, np.float32), np.zeros(8, np.float32))
    assert np.isnan(y[0]).all() and not np.isnan(y[1]).any()


def test_softmax_kernel_rows_against_float64():
    """Each probability to float32's precision (the kernel reassociates its row sums, but its
    exp keeps the rounding that splits x into n·ln2 + r), rows limited by first and limit."""
    s = (np.random.default_rng(1).standard_normal((3, 5, 300)) * 8).astype(np.float32)
    want = np.exp(s.astype(np.float64) - s.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    stats = np.empty((3, 5), np.float32), np.empty((3, 5), np.float32)
    got = s.copy()
    kernels.softmax_rows(got, 300, np.full(3, 300, np.int64), *stats)
    assert (np.abs(got - want) / want).max() < 1e-5
    limited = s.copy()
    kernels.softmax_rows(limited, 7, np.array([300, 9, 0]), *stats)   # row i sees min(7 + i, limit) keys
    n = 7 + 2                                                                # group 0, row 2
    part = np.exp(s[0, 2, :n].astype(np.float64) - s[0, 2, :n].max())
    np.testing.assert_allclose(limited[0, 2, :n], part / part.sum(), rtol=1e-5)
    assert not limited[0, 2, n:].any() and not limited[1, 4, 9:].any() and limited[1, 4, :9].all()
    assert not limited[2].any() and (stats[0][2] == 0).all() and (stats[1][2] == 1).all()


def test_softmax_kernel_passes_nan_to_the_whole_row():
    """A NaN score makes its row's probabilities NaN, as the NumPy softmax does (the kernel's
    row max skips NaN, but the NaN's own exp reaches the row sum)."""
    s = np.random.default_rng(2).standard_normal((1, 2, 40)).astype(np.float32)
    s[0, 0, 33] = np.nan
    stats = np.empty((1, 2), np.float32), np.empty((1, 2), np.float32)
    kernels.softmax_rows(s, 40, np.array([40]), *stats)
    assert np.isnan(s[0, 0]).all() and not np.isnan(s[0, 1]).any()


def _padded_attention_inputs(lengths, T=9, nh=2, hs=4, seed=3):
    rng = np.random.default_rng(seed)
    B = len(lengths)
    q, k, v = (rng.normal(size=(B, nh, T, hs)).astype(np.float32) for _ in range(3))
    mask = np.zeros((B, 1, 1, T), bool)
    for i, n in enumerate(lengths):
        mask[i, ..., :n] = True
    return q, k, v, mask


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_kernels_take_key_padding_and_causal_masks(causal):
    """A mask of real keys then padding (the encoder's) runs the compiled softmax, with each
    group's own key count; any other mask, or such a mask with the causal one, runs NumPy.
    Both agree with the reference, forward and backward, through blocks and chunks."""
    q, k, v, mask = _padded_attention_inputs([9, 4, 1])
    counts = attention.masking(q, k, v, causal, mask).key_counts
    assert (counts is None) == causal
    if not causal:
        assert counts.tolist() == [[9, 9], [4, 4], [1, 1]]
    scattered = mask.copy()
    scattered[1, ..., 6] = True                              # a hole: not a run of real keys
    assert attention.masking(q, k, v, False, scattered).key_counts is None
    assert attention.masking(q, k, v, True, None).key_counts == 9
    assert attention.masking(q, k, v, True, None, dropout_p=0.1).key_counts is None
    for m in (mask, scattered, None):
        want, rcache = reference_attention.forward(q, k, v, causal=causal, mask=m)
        dy = np.random.default_rng(4).normal(size=want.shape).astype(np.float32)
        wq, wk, wv = reference_attention.backward(dy, rcache)
        for sizes in ({}, {"block": 7, "qrows": 2}):
            y, cache = attention.forward(q, k, v, causal=causal, mask=m, keep_probs=False, **sizes)
            np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-6)
            for got, ref in zip(attention.backward(dy, cache), (wq, wk, wv)):
                np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6)


def test_switched_off_the_fast_ops_run_numpy():
    """With numba switched off the float32 GELU gives the NumPy gate's numbers, which differ
    from the kernel's in the last bits somewhere on a large sample."""
    x = np.random.default_rng(5).normal(0, 3, size=100_000).astype(np.float32)
    assert dispatch.runs("gelu", x) == NUMBA
    with_kernels = gelu.forward(x, "exact")[0]
    with dispatch.overridden(numba=False):
        assert dispatch.runs("gelu", x) == NUMPY
        without = gelu.forward(x, "exact")[0]
    assert not np.array_equal(with_kernels, without)
    np.testing.assert_allclose(with_kernels, without, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_update_kernel_gives_the_numpy_bits(name):
    """The compiled Adam update makes NumPy's float32 operations in NumPy's order: after five
    steps with weight decay on part of the parameters, θ, m and v are the same bits either way."""
    def run(with_kernels):
        p = np.random.default_rng(1).standard_normal(300_007).astype(np.float32)
        with dispatch.overridden(numba=with_kernels):
            assert dispatch.runs("adam", p) == (NUMBA if with_kernels else NUMPY)
            decay = np.zeros(p.size, bool)
            decay[1000:200_000] = True
            opt = getattr(optim, name)(p, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, decay_mask=decay,
                                       threads=2, chunk=1 << 15)
            for t in range(5):
                opt.step(np.random.default_rng(10 + t).standard_normal(p.size).astype(np.float32))
        return p, opt.m, opt.v

    for ours, numpy_only in zip(run(True), run(False)):
        np.testing.assert_array_equal(ours, numpy_only)
