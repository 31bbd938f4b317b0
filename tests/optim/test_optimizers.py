"""SGD, Adam and AdamW against torch.optim over ten steps with changing random gradients."""

import tracemalloc

import numpy as np
import pytest
import torch

from numformer.errors import CheckpointError
from numformer.optim import SGD, Adam, AdamW

SHAPES = {"wte": (7, 5), "h.0.w": (5, 3, 2), "h.0.b": (3,), "ln.weight": (5,)}
STEPS = 10


def _params_dict(seed=0, dtype=np.float64):
    """A dict of views into one flat buffer, as the model lays its parameters out."""
    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(s)) for s in SHAPES.values()]
    flat = rng.standard_normal(sum(sizes)).astype(dtype)
    params, start = {}, 0
    for (name, shape), n in zip(SHAPES.items(), sizes):
        params[name] = flat[start : start + n].reshape(shape)  # a view
        start += n
    return flat, params


def _grads(rng, params, dtype=np.float64):
    if isinstance(params, dict):
        return {k: rng.standard_normal(p.shape).astype(dtype) for k, p in params.items()}
    return rng.standard_normal(params.shape).astype(dtype)


def _torch_run(make_opt, groups_np, grads_seq, lrs=None):
    """Run torch.optim on tensors built from `groups_np` (list of (list of arrays, options))."""
    groups = [
        {"params": [torch.tensor(a, requires_grad=True) for a in arrays], **opts}
        for arrays, opts in groups_np
    ]
    opt = make_opt(groups)
    for i, grads in enumerate(grads_seq):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[i]
        flat_grads = iter(grads)
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.tensor(next(flat_grads))
        opt.step()
    return [p.detach().numpy() for g in opt.param_groups for p in g["params"]], opt


def _assert_matches_torch_masked(cls, theta0, mask, grads_seq, ours):
    """ours (the flat result of cls at lr 2e-2, weight decay 0.2 where mask) against torch's
    optimizer of the same name with two parameter groups: decayed and not."""
    torch_cls = getattr(torch.optim, cls.__name__)
    (on, off), _ = _torch_run(
        lambda groups: torch_cls(groups, lr=2e-2),
        [([theta0[mask]], {"weight_decay": 0.2}), ([theta0[~mask]], {"weight_decay": 0.0})],
        [[g[mask], g[~mask]] for g in grads_seq],
    )
    _assert_close(ours[mask], on)
    _assert_close(ours[~mask], off)


def _assert_close(ours, theirs, rtol=1e-12):
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())


CASES = [
    ("sgd", lambda p: SGD(p, lr=0.1), lambda g: torch.optim.SGD(g, lr=0.1)),
    ("adam", lambda p: Adam(p, lr=1e-2), lambda g: torch.optim.Adam(g, lr=1e-2)),
    (
        "adam_wd",
        lambda p: Adam(p, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
        lambda g: torch.optim.Adam(g, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    ),
    (
        "adamw",
        lambda p: AdamW(p, lr=1e-2, weight_decay=0.0),
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.0),
    ),
    (
        "adamw_wd",
        lambda p: AdamW(p, lr=3e-2, betas=(0.9, 0.99), weight_decay=0.1),
        lambda g: torch.optim.AdamW(g, lr=3e-2, betas=(0.9, 0.99), weight_decay=0.1),
    ),
    ("adamw_default", lambda p: AdamW(p), lambda g: torch.optim.AdamW(g)),
]


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_flat_buffer_matches_torch(name, ours, theirs):
    rng = np.random.default_rng(1)
    theta = rng.standard_normal(50)
    theta0 = theta.copy()
    grads_seq = [rng.standard_normal(50) for _ in range(STEPS)]
    opt = ours(theta)
    for g in grads_seq:
        opt.step(g)
    (expected,), _ = _torch_run(theirs, [([theta0], {})], [[g] for g in grads_seq])
    _assert_close(theta, expected)
    assert opt.step_count == STEPS
    assert not np.allclose(theta, theta0)  # the comparison is not vacuous


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_dict_of_views_matches_torch_and_updates_the_buffer(name, ours, theirs):
    flat, params = _params_dict()
    start = {k: p.copy() for k, p in params.items()}
    rng = np.random.default_rng(2)
    grads_seq = [_grads(rng, params) for _ in range(STEPS)]
    opt = ours(params)
    for g in grads_seq:
        opt.step(g)
    expected, _ = _torch_run(
        theirs, [(list(start.values()), {})], [list(g.values()) for g in grads_seq]
    )
    for p, e in zip(params.values(), expected):
        _assert_close(p, e)
    # the caller's flat buffer is what was updated (views, in place)
    _assert_close(flat, np.concatenate([e.reshape(-1) for e in expected]))


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_decay_mask_per_parameter_matches_torch_param_groups(cls):
    """The GPT's rule: decay only params with >= 2 dims; torch gets two param groups."""
    _, params = _params_dict(3)
    start = {k: p.copy() for k, p in params.items()}
    mask = {k: p.ndim >= 2 for k, p in params.items()}
    rng = np.random.default_rng(4)
    grads_seq = [_grads(rng, params) for _ in range(STEPS)]
    opt = cls(params, lr=2e-2, weight_decay=0.3, decay_mask=mask)
    for g in grads_seq:
        opt.step(g)

    decay = [k for k in params if mask[k]]
    no_decay = [k for k in params if not mask[k]]
    torch_cls = getattr(torch.optim, cls.__name__)
    expected, _ = _torch_run(
        lambda groups: torch_cls(groups, lr=2e-2),
        [([start[k] for k in decay], {"weight_decay": 0.3}),
         ([start[k] for k in no_decay], {"weight_decay": 0.0})],
        [[g[k] for k in decay + no_decay] for g in grads_seq],
    )
    for k, e in zip(decay + no_decay, expected):
        _assert_close(params[k], e)


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("pattern", ["elementwise", "runs"])
def test_decay_mask_elementwise_on_flat_buffer(cls, pattern):
    """Adam is element-wise, so torch on theta[mask] (decayed) and theta[~mask] is the oracle.

    `elementwise` has many short runs (the boolean `where=` path), `runs` a few long ones.
    """
    rng = np.random.default_rng(5)
    n = 400
    theta = rng.standard_normal(n)
    if pattern == "elementwise":
        mask = rng.random(n) < 0.5
    else:
        mask = np.zeros(n, dtype=bool)
        mask[10:150] = mask[200:390] = True
    theta0 = theta.copy()
    grads_seq = [rng.standard_normal(n) for _ in range(STEPS)]
    opt = cls(theta, lr=2e-2, weight_decay=0.2, decay_mask=mask)
    for g in grads_seq:
        opt.step(g)
    _assert_matches_torch_masked(cls, theta0, mask, grads_seq, theta)


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_lr_override_per_step_matches_torch_param_group_lr(name, ours, theirs):
    rng = np.random.default_rng(6)
    theta = rng.standard_normal(40)
    theta0 = theta.copy()
    grads_seq = [rng.standard_normal(40) for _ in range(STEPS)]
    lrs = [0.05 * (i + 1) / STEPS for i in range(STEPS)]
    opt = ours(theta)
    for g, lr in zip(grads_seq, lrs):
        opt.step(g, lr=lr)
    (expected,), _ = _torch_run(theirs, [([theta0], {})], [[g] for g in grads_seq], lrs=lrs)
    _assert_close(theta, expected)
    assert opt.lr == ours(theta0.copy()).lr  # the override was for those steps only


def test_adamw_float32_matches_torch_to_float32_precision():
    rng = np.random.default_rng(7)
    theta = rng.standard_normal(300).astype(np.float32)
    theta0 = theta.copy()
    grads_seq = [rng.standard_normal(300).astype(np.float32) for _ in range(STEPS)]
    opt = AdamW(theta, lr=1e-2, weight_decay=0.1)
    for g in grads_seq:
        opt.step(g)
    assert theta.dtype == np.float32 and opt.m.dtype == np.float32
    (expected,), _ = _torch_run(
        lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.1),
        [([theta0], {})], [[g] for g in grads_seq],
    )
    np.testing.assert_allclose(theta, expected, rtol=1e-5, atol=1e-6)


def test_adam_moments_match_torch_state():
    rng = np.random.default_rng(8)
    theta = rng.standard_normal(30)
    theta0 = theta.copy()
    grads_seq = [rng.standard_normal(30) for _ in range(STEPS)]
    opt = Adam(theta, lr=1e-2, weight_decay=0.05)
    for g in grads_seq:
        opt.step(g)
    _, topt = _torch_run(
        lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=0.05),
        [([theta0], {})], [[g] for g in grads_seq],
    )
    state = topt.state[topt.param_groups[0]["params"][0]]
    _assert_close(opt.m, state["exp_avg"].numpy())
    _assert_close(opt.v, state["exp_avg_sq"].numpy())
    assert opt.step_count == int(state["step"])


def test_caller_gradients_are_not_modified():
    rng = np.random.default_rng(9)
    theta = rng.standard_normal(20)
    g = rng.standard_normal(20)
    g0 = g.copy()
    for opt in (SGD(theta, lr=0.1), Adam(theta, weight_decay=0.1), AdamW(theta)):
        opt.step(g)
    np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("cls", [Adam, AdamW, SGD])
@pytest.mark.parametrize("structure", ["flat", "dict"])
def test_state_round_trip_continues_bit_identically(cls, structure):
    def make(seed):
        if structure == "flat":
            return np.random.default_rng(seed).standard_normal(60)
        return _params_dict(seed)[1]

    def copy(p):
        return {k: v.copy() for k, v in p.items()} if isinstance(p, dict) else p.copy()

    def kwargs():
        return {"lr": 0.05} if cls is SGD else {"lr": 0.05, "weight_decay": 0.1}

    rng = np.random.default_rng(10)
    params = make(11)
    grads_seq = [_grads(rng, params) for _ in range(2 * 5)]

    straight = copy(params)
    opt = cls(straight, **kwargs())
    for g in grads_seq:
        opt.step(g, lr=0.03)

    first = copy(params)
    opt1 = cls(first, **kwargs())
    for g in grads_seq[:5]:
        opt1.step(g, lr=0.03)
    saved_params, saved_state = copy(first), opt1.state_dict()
    for g in grads_seq[5:7]:  # the saved state must not be aliased to the live one
        opt1.step(g)
    resumed = copy(saved_params)
    opt2 = cls(resumed, **kwargs())
    opt2.load_state_dict(saved_state)
    assert opt2.step_count == 5
    for g in grads_seq[5:]:
        opt2.step(g, lr=0.03)

    pairs = zip(straight.values(), resumed.values()) if structure == "dict" else [(straight, resumed)]
    for a, b in pairs:
        np.testing.assert_array_equal(a, b)
    state_a, state_b = opt.state_dict(), opt2.state_dict()
    assert state_a.keys() == state_b.keys()
    assert isinstance(state_b["step"], int) and state_b["step"] == 10
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key])


def test_load_state_dict_rejects_mismatched_state():
    theta = np.zeros(8)
    opt = AdamW(theta)
    good = opt.state_dict()
    with pytest.raises(CheckpointError, match=r"shape \(7,\)"):
        opt.load_state_dict({**good, "m": np.zeros(7)})
    with pytest.raises(CheckpointError, match="float32"):
        opt.load_state_dict({**good, "v": np.zeros(8, dtype=np.float32)})
    with pytest.raises(CheckpointError, match="keys"):
        opt.load_state_dict({"step": 1, "m": np.zeros(8)})
    with pytest.raises(CheckpointError, match="step"):
        opt.load_state_dict({**good, "step": -1})
    opt.load_state_dict({**good, "step": np.int64(3)})  # as read back from a file
    assert opt.step_count == 3


def test_bad_structure_and_shapes_raise_value_error_naming_them():
    _, params = _params_dict()
    opt = AdamW(params)
    with pytest.raises(ValueError, match="wte"):
        opt.step({**_grads(np.random.default_rng(0), params), "wte": np.zeros((5, 7, 2))})
    with pytest.raises(ValueError, match="missing"):
        opt.step({"wte": np.zeros((7, 5))})
    with pytest.raises(ValueError, match="structure"):
        opt.step(np.zeros(10))
    assert opt.step_count == 0  # a refused step does not count
    with pytest.raises(ValueError, match="contiguous"):
        SGD(np.zeros((4, 4))[:, ::2], lr=0.1)
    with pytest.raises(ValueError, match="decay_mask"):
        AdamW(np.zeros(4), decay_mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="betas"):
        Adam(np.zeros(4), betas=(0.9, 1.0))


def test_step_allocates_nothing_large():
    n = 500_000  # 4 MB per float64 buffer
    theta = np.random.default_rng(0).standard_normal(n)
    g = np.random.default_rng(1).standard_normal(n)
    mask = np.ones(n, dtype=bool)
    mask[: n // 3] = False
    for opt in (
        SGD(theta, lr=0.1),
        Adam(theta, weight_decay=0.1, decay_mask=mask),
        AdamW(theta, weight_decay=0.1, decay_mask=mask),
    ):
        opt.step(g)  # warm up
        tracemalloc.start()
        opt.step(g, lr=1e-3)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 100_000, f"{type(opt).__name__}.step allocated {peak} bytes"


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("pattern", ["elementwise", "runs"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_chunked_threaded_step_is_bit_identical_and_matches_torch(cls, pattern, threads):
    """step() walks the parameters in chunks spread over threads; with chunks of 7 (flat) or 3
    (dict, one segment per parameter) elements the decay runs and the segments cross chunk edges,
    and the result must not change by a bit."""

    rng = np.random.default_rng(9)
    _, start = _params_dict(seed=9)
    n = sum(p.size for p in start.values())
    mask = rng.random(n) < 0.5 if pattern == "elementwise" else np.r_[np.zeros(12, bool), np.ones(40, bool),
                                                                       np.zeros(n - 52, bool)]
    grads_seq = [rng.standard_normal(n) for _ in range(STEPS)]

    def run(chunk, threads, as_dict=False):
        flat, params = _params_dict(seed=9)
        if as_dict:    # one segment per parameter: chunks start inside segments at offsets > 0
            masks = {k: m.reshape(p.shape) for (k, p), m in
                     zip(params.items(), np.split(mask, np.cumsum([p.size for p in params.values()])[:-1]))}
            opt = cls(params, lr=2e-2, weight_decay=0.2, decay_mask=masks, threads=threads, chunk=chunk)
            sizes = np.cumsum([p.size for p in params.values()])[:-1]
            for g in grads_seq:
                opt.step({k: part.reshape(p.shape) for (k, p), part in zip(params.items(), np.split(g, sizes))})
        else:
            opt = cls(flat, lr=2e-2, weight_decay=0.2, decay_mask=mask, threads=threads, chunk=chunk)
            for g in grads_seq:
                opt.step(g)
        return flat, opt

    whole, _ = run(1 << 16, 1)
    chunked, opt = run(7, threads)
    assert len(opt._scratch) == min(threads, -(-n // 7))
    np.testing.assert_array_equal(chunked, whole)
    by_name, _ = run(3, threads, as_dict=True)
    np.testing.assert_array_equal(by_name, whole)
    flat0, _ = _params_dict(seed=9)
    _assert_matches_torch_masked(cls, flat0, mask, grads_seq, chunked)
