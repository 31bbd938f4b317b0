"""Tier 2: the whole Llama against a reference written in PyTorch (numformer.reference.llama),
loaded with the same weights: logits, loss and every gradient in float64, with 1, 2 and n_head
key/value heads, tied and untied, with and without Qwen2's q/k/v biases; ten AdamW steps; the KV
cache; the reference and fast op sets; checkpoints."""

import numpy as np
import pytest
import torch

from numformer import Llama, LlamaConfig
from numformer.errors import CheckpointError
from numformer.model import build, load
from numformer.model.config import llama_hidden
from numformer.optim import AdamW
from numformer.optim.clip import clip_grad_norm
from numformer.optim.schedule import cosine_lr
from numformer.reference.llama import ReferenceLlama

# (n_kv_head, tie_embeddings, attention_bias) with n_head 4: MQA, GQA, one kv head per head
CONFIGS = {
    "mqa": dict(n_kv_head=1, tie_embeddings=False, attention_bias=False),
    "gqa2-tied": dict(n_kv_head=2, tie_embeddings=True, attention_bias=False),
    "mha-qkv-bias": dict(n_kv_head=4, tie_embeddings=False, attention_bias=True),
    "gqa2-bias-tied": dict(n_kv_head=2, tie_embeddings=True, attention_bias=True),
}


def tiny(name, **kw):
    base = dict(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_embd=16, n_hidden=24, rope_theta=10_000.0,
                rms_norm_eps=1e-5, dropout=0.0)
    base.update(CONFIGS[name])
    base.update(kw)
    return LlamaConfig(**base)


def randomize(model, seed):
    """Random weights everywhere (RMSNorm gains and biases too), so every path is exercised."""
    rng = np.random.default_rng(seed)
    model.params.flat[...] = rng.normal(0, 0.3, size=model.params.size)
    for name, w in model.params.items():
        if "norm" in name:
            w[...] = 1.0 + rng.normal(0, 0.2, size=w.shape)


def pair(name, seed=0, ops="fast", **kw):
    cfg = tiny(name, **kw)
    model = Llama(cfg, dtype=np.float64, seed=seed, ops=ops)
    randomize(model, seed)
    ref = ReferenceLlama.from_config(cfg).double()
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
        assert rel_err(g, tgrads[n]) < 1e-9, n


def test_parameters_are_named_and_shaped_as_hugging_face_names_them():
    cfg = tiny("mqa", n_layer=1)
    names = {n: tuple(v.shape) for n, v in Llama(cfg, init=False).params.items()}
    assert names == {
        "model.embed_tokens.weight": (13, 16), "model.layers.0.input_layernorm.weight": (16,),
        "model.layers.0.self_attn.q_proj.weight": (16, 16), "model.layers.0.self_attn.k_proj.weight": (4, 16),
        "model.layers.0.self_attn.v_proj.weight": (4, 16), "model.layers.0.self_attn.o_proj.weight": (16, 16),
        "model.layers.0.post_attention_layernorm.weight": (16,), "model.layers.0.mlp.gate_proj.weight": (24, 16),
        "model.layers.0.mlp.up_proj.weight": (24, 16), "model.layers.0.mlp.down_proj.weight": (16, 24),
        "model.norm.weight": (16,), "lm_head.weight": (13, 16)}
    biased = Llama(tiny("gqa2-bias-tied", n_layer=1), init=False).params.views
    assert {n for n in biased if n.endswith(".bias")} == {f"model.layers.0.self_attn.{p}_proj.bias" for p in "qkv"}
    assert "lm_head.weight" not in biased


def test_the_swiglu_width_is_llamas_rounding():
    """2/3 of 4C, rounded up to a multiple of 256: Llama 2 7B's 11,008 for C = 4096."""
    assert llama_hidden(4096) == 11008 and llama_hidden(5120) == 13824 and llama_hidden(128) == 512
    assert LlamaConfig(n_embd=128).n_hidden == 512 and LlamaConfig(n_embd=128, n_hidden=344).n_hidden == 344
    assert LlamaConfig(n_head=4).n_kv_head == 4


@pytest.mark.parametrize("kw, key", [(dict(n_head=4, n_kv_head=3), "n_kv_head"), (dict(n_embd=12, n_head=4), "n_embd"),
                                     (dict(rope_theta=0.0), "rope_theta"), (dict(tie_embeddings="false"), "tie_embeddings"),
                                     (dict(n_hidden=0), "n_hidden")])
def test_bad_configs_name_the_field(kw, key):
    from numformer.model.config import InvalidConfig

    with pytest.raises(InvalidConfig) as e:
        LlamaConfig(**kw)
    assert e.value.key == key


@pytest.mark.parametrize("ops", OP_SETS)
@pytest.mark.parametrize("name", ["gqa2-tied", "mha-qkv-bias"])
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


def test_reference_and_fast_op_sets_compute_the_same_model():
    _, fast, _ = pair("gqa2-bias-tied", ops="fast")
    _, ref_ops, _ = pair("gqa2-bias-tied", ops="reference")
    x, y = batch(fast.config)
    (lf, _), (lr, _) = fast.forward(x, y), ref_ops.forward(x, y)
    fast.backward()
    ref_ops.backward()
    assert rel_err(lf, lr) < 1e-12
    assert rel_err(fast.grads.flat, ref_ops.grads.flat) < 1e-11


@pytest.mark.parametrize("ops", OP_SETS)
def test_finite_differences_through_the_whole_model(ops):
    cfg, model, _ = pair("gqa2-bias-tied", seed=5, ops=ops)
    x, y = batch(cfg, B=2, seed=4)
    model.zero_grad()
    model.forward(x, y)
    model.backward()
    rng = np.random.default_rng(0)
    for i in rng.choice(model.params.size, size=40, replace=False):
        orig = model.params.flat[i]
        model.params.flat[i] = orig + 1e-6
        lp = model.forward(x, y)[1]
        model.params.flat[i] = orig - 1e-6
        lm = model.forward(x, y)[1]
        model.params.flat[i] = orig
        num = (lp - lm) / 2e-6
        assert abs(model.grads.flat[i] - num) < 1e-6 * max(1.0, abs(num)), i


@pytest.mark.parametrize("name", ["mqa", "gqa2-bias-tied"])
def test_kv_cached_logits_equal_uncached_logits(name):
    cfg, model, _ = pair(name, seed=2)
    model.eval()
    x, _ = batch(cfg, B=2, seed=6)
    want = model.forward(x)
    cache = model.new_kv_cache(2)
    assert cache.k[0].shape == (2, cfg.n_kv_head, cfg.block_size, cfg.head_size)    # only the kv heads
    got = [model.forward_cached(x[:, :3], cache)]
    for t in range(3, cfg.block_size):
        got.append(model.forward_cached(x[:, t:t + 1], cache))
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_generation_with_cache_equals_without_cache_past_the_window(dtype):
    cfg = tiny("gqa2-tied")
    model = Llama(cfg, dtype=dtype, seed=4)
    randomize(model, 4)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    n = 2 * cfg.block_size                          # the window slides: positions start again at 0
    cached = model.generate(prompt, n, temperature=0)
    uncached = model.generate(prompt, n, temperature=0, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (2, 3 + n)


def test_save_and_load_through_the_one_loader(tmp_path):
    cfg, model, _ = pair("gqa2-bias-tied")
    model.save(tmp_path / "ckpt", tokenizer=None)
    back = load(tmp_path / "ckpt")
    assert isinstance(back, Llama) and back.config == cfg and back.dtype == np.float64
    for n, v in model.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[n], v)
    import json
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["format"] == "numformer-llama"
    with pytest.raises(CheckpointError, match="numformer llama checkpoint; this needs a gpt2 model"):
        load(tmp_path / "ckpt", families=("gpt2",))


def test_build_takes_either_family():
    from numformer import GPT, GPTConfig

    assert isinstance(build(GPTConfig(n_layer=1)), GPT)
    assert isinstance(build(LlamaConfig(n_layer=1)), Llama)


def test_float32_model_agrees_with_float64():
    cfg = tiny("gqa2-bias-tied")
    m64 = Llama(cfg, dtype=np.float64, seed=1)
    randomize(m64, 1)
    m32 = Llama(cfg, dtype=np.float32, seed=1)
    m32.params.flat[...] = m64.params.flat
    m64.params.flat[...] = m32.params.flat            # both float32-exact
    x, y = batch(cfg)
    l64, loss64 = m64.forward(x, y)
    l32, loss32 = m32.forward(x, y)
    m64.backward()
    m32.backward()
    assert l32.dtype == np.float32 and m32.grads.flat.dtype == np.float32
    assert rel_err(l32, l64) < 1e-5 and abs(loss32 - loss64) < 1e-5 * loss64
    assert rel_err(m32.grads.flat, m64.grads.flat) < 1e-4

