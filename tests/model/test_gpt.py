"""Tier 2: the whole GPT against a reference written in PyTorch, loaded with the same weights."""

import numpy as np
import pytest
import torch

from numformer import GPT, GPTConfig
from numformer.optim import AdamW
from numformer.optim.clip import clip_grad_norm
from numformer.optim.schedule import cosine_lr

from numformer.reference.gpt import ReferenceGPT

CONFIGS = {
    "sinusoidal": dict(pos_encoding="sinusoidal", bias=True, gelu="tanh"),
    "learned": dict(pos_encoding="learned", bias=True, gelu="tanh"),
    "nobias-exact": dict(pos_encoding="learned", bias=False, gelu="exact"),
    "sinusoidal-nobias": dict(pos_encoding="sinusoidal", bias=False, gelu="exact"),
}


def tiny(name, **kw):
    base = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=12, dropout=0.0)
    base.update(CONFIGS[name])
    base.update(kw)
    return GPTConfig(**base)


def randomize(model, seed):
    """Random weights everywhere (also LayerNorm gains and biases), so every path is exercised."""
    rng = np.random.default_rng(seed)
    model.params.flat[...] = rng.normal(0, 0.3, size=model.params.size)
    for name, w in model.params.items():
        if ".ln_" in name and name.endswith(".weight") or name == "transformer.ln_f.weight":
            w[...] = 1.0 + rng.normal(0, 0.2, size=w.shape)


def pair(name, seed=0, ops="fast", **kw):
    cfg = tiny(name, **kw)
    model = GPT(cfg, dtype=np.float64, seed=seed, ops=ops)
    randomize(model, seed)
    ref = ReferenceGPT.from_config(cfg).double()
    ref.load_numpy(model.state_dict())
    return cfg, model, ref


def batch(cfg, B=3, T=None, seed=1, ignore=False):
    rng = np.random.default_rng(seed)
    T = T or cfg.block_size
    x = rng.integers(0, cfg.vocab_size, size=(B, T))
    y = rng.integers(0, cfg.vocab_size, size=(B, T))
    if ignore:
        y[0, :2] = -1
    return x, y


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


OP_SETS = ["reference", "fast"]


@pytest.mark.parametrize("ops", OP_SETS)
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("T", [8, 5, 1])
def test_logits_loss_and_every_gradient_match_pytorch(name, T, ops):
    cfg, model, ref = pair(name, ops=ops)
    x, y = batch(cfg, T=T, ignore=(T > 2))
    logits, loss = model.forward(x, y)
    model.zero_grad()
    model.backward()

    tlogits, tloss = ref(torch.from_numpy(x), torch.from_numpy(y))
    tloss.backward()
    assert logits.shape == (3, T, cfg.vocab_size)
    assert rel_err(logits, tlogits.detach().numpy()) < 1e-10
    assert abs(loss - tloss.item()) < 1e-10 * abs(tloss.item())
    tgrads = {n: p.grad.numpy() for n, p in ref.named_parameters()}
    assert set(tgrads) == set(model.grads.views)
    for n, g in model.grads.items():
        if n == "transformer.wpe.weight" and T < cfg.block_size:
            assert np.all(g[T:] == 0) and np.all(tgrads[n][T:] == 0)
        assert rel_err(g, tgrads[n]) < 1e-9, n


def test_forward_without_targets_returns_logits_only():
    cfg, model, ref = pair("sinusoidal")
    x, _ = batch(cfg)
    out = model.forward(x)
    assert isinstance(out, np.ndarray) and out.shape == (3, cfg.block_size, cfg.vocab_size)
    with pytest.raises(RuntimeError):
        model.backward()   # no loss to differentiate


def test_backward_accumulates_like_pytorch():
    """Two backward passes without zero_grad add up, as loss.backward() twice does in PyTorch."""
    cfg, model, _ = pair("learned")
    x, y = batch(cfg)
    model.zero_grad()
    model.forward(x, y)
    model.backward()
    once = model.grads.flat.copy()
    model.forward(x, y)
    model.backward()
    np.testing.assert_allclose(model.grads.flat, 2 * once, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("ops", OP_SETS)
@pytest.mark.parametrize("name", ["sinusoidal", "nobias-exact"])
def test_ten_adamw_steps_with_clipping_and_weight_decay_match_pytorch(name, ops):
    cfg, model, ref = pair(name, seed=3, ops=ops)
    lr, wd, betas, clip = 3e-3, 0.1, (0.9, 0.95), 0.5
    opt = AdamW(model.params.flat, lr=lr, betas=betas, eps=1e-8, weight_decay=wd, decay_mask=model.decay_mask())
    topt = ref.configure_adamw(lr, wd, betas, eps=1e-8)
    rng = np.random.default_rng(7)
    norms = []
    for it in range(10):
        x = rng.integers(0, cfg.vocab_size, size=(4, cfg.block_size))
        y = rng.integers(0, cfg.vocab_size, size=(4, cfg.block_size))
        step_lr = cosine_lr(it, lr, 2, 10, lr / 10)
        model.zero_grad()
        _, loss = model.forward(x, y)
        model.backward()
        norm = clip_grad_norm(model.grads.flat, clip)
        opt.step(model.grads.flat, lr=step_lr)

        topt.zero_grad()
        _, tloss = ref(torch.from_numpy(x), torch.from_numpy(y))
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        for g in topt.param_groups:
            g["lr"] = step_lr
        topt.step()
        assert abs(loss - tloss.item()) < 1e-9 * abs(tloss.item())
        norms.append((norm, tnorm.item()))
    assert any(n > clip for n, _ in norms), "clipping was never exercised"
    for n, tn in norms:
        assert abs(n - tn) < 1e-9 * tn
    for n, p in ref.named_parameters():
        assert rel_err(model.params[n], p.detach().numpy()) < 1e-9, n


@pytest.mark.parametrize("ops", OP_SETS)
def test_finite_differences_through_the_whole_model(ops):
    cfg, model, _ = pair("learned", seed=5, ops=ops)
    x, y = batch(cfg, B=2, seed=4)
    model.zero_grad()
    model.forward(x, y)
    model.backward()
    rng = np.random.default_rng(0)
    h = 1e-6
    for name in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
                 "transformer.h.1.mlp.c_fc.bias", "transformer.h.0.ln_1.weight", "transformer.ln_f.bias"]:
        w = model.params[name].reshape(-1)
        g = model.grads[name].reshape(-1)
        for j in rng.choice(w.size, size=3, replace=False):
            old = w[j]
            w[j] = old + h
            lp = model.forward(x, y)[1]
            w[j] = old - h
            lm = model.forward(x, y)[1]
            w[j] = old
            fd = (lp - lm) / (2 * h)
            assert abs(fd - g[j]) < 1e-6 * max(1.0, abs(fd)), (name, j, fd, g[j])


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_ops_and_fast_ops_compute_the_same_model(name, dtype, tol):
    """One GPT built on each op set, the same weights: the same logits, loss and gradients (up
    to rounding), also with dropout (the same masks from the same generator state)."""
    cfg = tiny(name, dropout=0.2, block_size=16)
    models = {ops: GPT(cfg, dtype=dtype, seed=2, ops=ops) for ops in OP_SETS}
    assert models["fast"].ops.attention is not models["reference"].ops.attention
    x, y = batch(cfg, B=3, seed=3, ignore=True)
    out = {}
    for ops, m in models.items():
        m.zero_grad()
        logits, loss = m.forward(x, y)
        m.backward()
        out[ops] = (logits, loss, m.grads.flat.copy())
    (l_ref, loss_ref, g_ref), (l_fast, loss_fast, g_fast) = out["reference"], out["fast"]
    assert rel_err(l_fast, l_ref) < tol and abs(loss_fast - loss_ref) < tol * loss_ref
    assert rel_err(g_fast, g_ref) < 10 * tol


def test_the_op_set_is_an_explicit_choice():
    cfg = tiny("sinusoidal")
    import numformer.ops as reference
    from numformer.ops import fast

    assert GPT(cfg).ops is fast                         # the default, what `numformer train` uses
    assert GPT(cfg, ops="reference").ops is reference
    with pytest.raises(ValueError, match="op set"):
        GPT(cfg, ops="faster")


@pytest.mark.parametrize("form, tok_scale, pos_scale", [("scaled", 1.0, None), ("paper", None, 1.0),
                                                        ("article", 1.0, 1.0)])
def test_sinusoidal_forms_add_embedding_and_positions_as_documented(form, tok_scale, pos_scale):
    """x0 = wte[idx] + P/√C ("scaled"), √C·wte[idx] + P ("paper"), wte[idx] + P ("article"):
    seen through a model whose blocks and LN_f are switched off (zero weights, unit gain) so that
    logits = LN_f(x0) · wteᵀ."""
    from numformer.ops import layernorm, positional

    cfg = tiny("sinusoidal", n_layer=1, sinusoidal_form=form)
    C = cfg.n_embd
    tok_scale = tok_scale or np.sqrt(C)
    pos_scale = pos_scale or 1 / np.sqrt(C)
    model = GPT(cfg, dtype=np.float64, seed=1)
    for name, w in model.params.items():
        if name.startswith("transformer.h."):
            w[...] = 0.0
    x, _ = batch(cfg, B=2)
    wte = model.params["transformer.wte.weight"]
    x0 = tok_scale * wte[x] + pos_scale * positional.sinusoidal(cfg.block_size, C)
    expected = layernorm.forward(x0, np.ones(C), np.zeros(C))[0] @ wte.T
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-10, atol=1e-12)


def test_dropout_gradient_with_a_fixed_mask_matches_finite_differences():
    """With dropout on, the same RNG state gives the same masks, so the loss is a deterministic
    function of the weights: its finite differences must equal the backward pass."""
    cfg, model, _ = pair("sinusoidal", seed=6, dropout=0.3)
    model.train()
    x, y = batch(cfg, B=2, seed=8)
    state = model.rng.bit_generator.state

    def loss_with_fixed_masks():
        model.rng.bit_generator.state = state
        return model.forward(x, y)[1]

    base = loss_with_fixed_masks()
    model.zero_grad()
    model.backward()
    model.eval()
    assert model.forward(x, y)[1] != base      # dropout really changed the loss
    model.train()
    h = 1e-6
    rng = np.random.default_rng(1)
    for name in ["transformer.wte.weight", "transformer.h.0.attn.c_proj.weight", "transformer.h.1.mlp.c_proj.weight"]:
        w, g = model.params[name].reshape(-1), model.grads[name].reshape(-1)
        for j in rng.choice(w.size, size=3, replace=False):
            old = w[j]
            w[j] = old + h
            lp = loss_with_fixed_masks()
            w[j] = old - h
            lm = loss_with_fixed_masks()
            w[j] = old
            assert abs((lp - lm) / (2 * h) - g[j]) < 1e-6 * max(1.0, abs(g[j])), name


def test_parameters_are_views_into_one_flat_buffer():
    model = GPT(tiny("learned"))
    assert model.params.flat.dtype == np.float32
    total = 0
    for name, w in model.params.items():
        assert np.shares_memory(w, model.params.flat), name
        total += w.size
    assert total == model.params.flat.size == model.num_params()
    assert "transformer.h.1.attn.c_attn.weight" in model.params.views
    assert "lm_head.weight" not in model.params.views   # tied to wte


def test_gpt2_initialisation_statistics():
    cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=6, n_head=4, n_embd=128, pos_encoding="learned")
    model = GPT(cfg, seed=0)
    p = model.params
    assert abs(p["transformer.wte.weight"].std() - 0.02) < 0.001
    assert abs(p["transformer.h.0.mlp.c_fc.weight"].std() - 0.02) < 0.001
    expect = 0.02 / np.sqrt(2 * cfg.n_layer)
    assert abs(p["transformer.h.0.attn.c_proj.weight"].std() - expect) < 0.0005
    assert abs(p["transformer.h.0.mlp.c_proj.weight"].std() - expect) < 0.0005
    assert np.all(p["transformer.h.0.ln_1.weight"] == 1) and np.all(p["transformer.h.0.ln_1.bias"] == 0)
    assert np.all(p["transformer.h.0.attn.c_attn.bias"] == 0)
    mask = model.params.like()
    mask.flat[...] = model.decay_mask()
    for name, m in mask.items():
        assert np.all(m == (1 if p[name].ndim >= 2 else 0)), name


def test_float32_model_agrees_with_float64():
    cfg, m64, _ = pair("sinusoidal")
    m32 = GPT(cfg, dtype=np.float32)
    m32.load_state_dict(m64.state_dict())
    x, y = batch(cfg)
    l64, loss64 = m64.forward(x, y)
    l32, loss32 = m32.forward(x, y)
    assert l32.dtype == np.float32
    assert rel_err(l32, l64) < 1e-5
    m64.zero_grad(), m32.zero_grad()
    m64.backward(), m32.backward()
    assert rel_err(m32.grads.flat, m64.grads.flat) < 1e-4


