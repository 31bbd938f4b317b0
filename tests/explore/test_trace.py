"""The explorer's forward pass (numformer.explore.trace) against the model and against PyTorch.

trace() runs its own pass through numformer.ops to keep what the page draws. Its logits must be
the model's own (so the pictures cannot drift from the model), and its attention probabilities,
residual streams and logit lens must be what an independent PyTorch GPT computes from the same
weights and ids.
"""

import math

import numpy as np
import pytest
import torch

from numformer.explore import trace
from numformer.explore.trace import head
from numformer.reference.gpt import ReferenceGPT

from .conftest import tiny_llama, tiny_model

CONFIGS = [
    dict(),                                                       # sinusoidal positions, biases, tanh GELU
    dict(pos_encoding="learned", bias=False, gelu="exact"),
    dict(n_head=4, n_layer=3),
    dict(sinusoidal_form="paper"),                                # √C·wte[idx] + P
    dict(sinusoidal_form="article"),                              # wte[idx] + P
]


def reference_pass(model, ids):
    """Attention probabilities (n_layer, nh, T, T), the stream after the embedding and after each
    block (n_layer + 1, T, C), and the logits (T, V), from the PyTorch reference GPT in float64."""
    cfg = model.config
    ref = ReferenceGPT.from_config(cfg).double().load_numpy(
        {k: v.astype(np.float64) for k, v in model.params.items()}).eval()
    qkv, streams = [], []
    hooks = [b.attn.c_attn.register_forward_hook(lambda m, i, o: qkv.append(o)) for b in ref.transformer.h]
    hooks.append(ref.transformer.drop.register_forward_hook(lambda m, i, o: streams.append(o)))
    hooks += [b.register_forward_hook(lambda m, i, o: streams.append(o)) for b in ref.transformer.h]
    with torch.no_grad():
        logits, _ = ref(torch.from_numpy(np.asarray(ids, dtype=np.int64))[None])
    for h in hooks:
        h.remove()
    T, C, nh = len(ids), cfg.n_embd, cfg.n_head
    att = []
    for o in qkv:                                                   # (1, T, 3C)
        q, k, _ = o[0].split(C, dim=-1)
        q = q.view(T, nh, C // nh).transpose(0, 1)                  # (nh, T, hs)
        k = k.view(T, nh, C // nh).transpose(0, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(C // nh)
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        att.append(torch.softmax(s, dim=-1).numpy())
    return np.stack(att), torch.cat(streams).numpy(), logits[0].numpy(), ref


@pytest.mark.parametrize("kw", CONFIGS)
def test_logits_are_the_models_own(kw):
    model = tiny_model(**kw)
    ids = model.tokenizer.encode("ROMEO:\nBut soft, what light")
    tr = trace(model, ids)
    expected = model.forward(ids[None])[0]
    assert tr.logits.shape == expected.shape
    np.testing.assert_allclose(tr.logits, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("kw", CONFIGS)
def test_attention_streams_and_lens_match_pytorch(kw):
    model = tiny_model(**kw)
    ids = model.tokenizer.encode("JULIET:\nO Romeo, Romeo, where")
    tr = trace(model, ids)
    att, streams, logits, ref = reference_pass(model, ids)
    T = len(ids)
    assert len(tr.attention) == model.config.n_layer
    for layer, a in enumerate(tr.attention):
        assert a.shape == (model.config.n_head, T, T)
        np.testing.assert_allclose(a, att[layer], rtol=0, atol=1e-5)
    # the picture has something to show: the heads are not uniform and not all alike
    assert np.ptp(att[:, :, -1, :]) > 0.05
    np.testing.assert_allclose(tr.residual, streams, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tr.logits, logits, rtol=0, atol=1e-4)
    # the logit lens: the final LayerNorm and the tied head on each stream, as torch does it
    with torch.no_grad():
        for layer in range(model.config.n_layer + 1):
            lens = ref.transformer.ln_f(torch.from_numpy(streams[layer])) @ ref.transformer.wte.weight.T
            np.testing.assert_allclose(head(model, tr.residual[layer]), lens.numpy(), rtol=0, atol=1e-4)


def test_causal_rows():
    model = tiny_model()
    tr = trace(model, model.tokenizer.encode("But soft"))
    for a in tr.attention:
        np.testing.assert_allclose(a.sum(axis=-1), 1.0, atol=1e-6)
        assert np.all(np.triu(a, k=1) == 0.0)                   # exactly zero above the diagonal


def test_one_token_and_too_long():
    model = tiny_model(block_size=8)
    tr = trace(model, model.tokenizer.encode("R"))
    assert tr.attention[0].shape == (2, 1, 1) and tr.attention[0][0, 0, 0] == 1.0
    with pytest.raises(ValueError, match="block_size"):
        trace(model, model.tokenizer.encode("ROMEO: But"))


# ----------------------------------------------------------------------------- a Llama

LLAMA_CONFIGS = [
    dict(),                                                        # 4 query heads share 2 key/value heads
    dict(n_kv_head=4),                                             # one key/value head each
    dict(n_kv_head=1, tie_embeddings=True, attention_bias=True, rope_theta=500_000.0),   # multi-query, Qwen2's biases
]


def llama_reference_pass(model, ids):
    """Attention probabilities (n_layer, nh, T, T) per query head, the streams (n_layer + 1, T, C)
    and the logits (T, V) from the PyTorch reference Llama in float64 (numformer.reference.llama:
    its own RoPE and repeat_kv, no numformer code)."""
    from numformer.reference.llama import ReferenceLlama, rope_tables

    cfg = model.config
    ref = ReferenceLlama.from_config(cfg).double().load_numpy(
        {k: v.astype(np.float64) for k, v in model.params.items()}).eval()
    qk, streams = [], []
    hooks = []
    for b in ref.model.layers:
        hooks.append(b.self_attn.q_proj.register_forward_hook(lambda m, i, o: qk.append(o)))
        hooks.append(b.self_attn.k_proj.register_forward_hook(lambda m, i, o: qk.append(o)))
        hooks.append(b.register_forward_hook(lambda m, i, o: streams.append(o)))
    hooks.append(ref.model.embed_tokens.register_forward_hook(lambda m, i, o: streams.insert(0, o)))
    with torch.no_grad():
        logits, _ = ref(torch.from_numpy(np.asarray(ids, dtype=np.int64))[None])
    for h in hooks:
        h.remove()
    T, nh, nkv, hs = len(ids), cfg.n_head, cfg.n_kv_head, cfg.head_size
    cos, sin = rope_tables(T, hs, cfg.rope_theta, torch.float64)
    rot = lambda x: x * cos + torch.cat([-x[..., hs // 2:], x[..., :hs // 2]], dim=-1) * sin   # noqa: E731
    att = []
    for q, k in zip(qk[0::2], qk[1::2]):
        q = rot(q[0].view(T, nh, hs).transpose(0, 1))               # (nh, T, hs)
        k = rot(k[0].view(T, nkv, hs).transpose(0, 1)).repeat_interleave(nh // nkv, dim=0)
        s = q @ k.transpose(-1, -2) / math.sqrt(hs)
        s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        att.append(torch.softmax(s, dim=-1).numpy())
    return np.stack(att), torch.cat(streams).numpy(), logits[0].numpy(), ref


@pytest.mark.parametrize("kw", LLAMA_CONFIGS)
def test_llama_logits_are_the_models_own(kw):
    model = tiny_llama(**kw)
    ids = model.tokenizer.encode("ROMEO:\nBut soft, what light")
    tr = trace(model, ids)
    expected = model.forward(ids[None])[0]
    assert tr.logits.shape == expected.shape
    np.testing.assert_allclose(tr.logits, expected, rtol=0, atol=2e-5)
    assert tr.positions is None                                     # no position table


@pytest.mark.parametrize("kw", LLAMA_CONFIGS)
def test_llama_attention_per_query_head_streams_and_lens_match_pytorch(kw):
    model = tiny_llama(**kw)
    cfg = model.config
    ids = model.tokenizer.encode("JULIET:\nO Romeo, Romeo, where")
    tr = trace(model, ids)
    att, streams, logits, ref = llama_reference_pass(model, ids)
    T = len(ids)
    assert len(tr.attention) == cfg.n_layer
    for layer, a in enumerate(tr.attention):
        assert a.shape == (cfg.n_head, T, T)                        # one matrix per QUERY head
        np.testing.assert_allclose(a, att[layer], rtol=0, atol=1e-5)
        assert np.all(np.triu(a, k=1) == 0.0)
    assert np.ptp(att[:, :, -1, :]) > 0.05
    np.testing.assert_allclose(tr.residual, streams, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tr.logits, logits, rtol=0, atol=1e-4)
    with torch.no_grad():
        W = ref.model.embed_tokens.weight if cfg.tie_embeddings else ref.lm_head.weight
        for layer in range(cfg.n_layer + 1):
            lens = ref.model.norm(torch.from_numpy(streams[layer])) @ W.T
            np.testing.assert_allclose(head(model, tr.residual[layer]), lens.numpy(), rtol=0, atol=1e-4)


def test_grouped_query_heads_say_which_key_value_head_they_share():
    model = tiny_llama(n_head=4, n_kv_head=2)
    tr = trace(model, model.tokenizer.encode("But soft, what"))
    assert [a.shape[0] for a in tr.attention] == [4, 4]
    assert tr.kv_heads.tolist() == [0, 0, 1, 1]
    # heads of a group read the same keys with their own queries: their matrices differ
    for a in tr.attention:
        assert np.abs(a[0] - a[1]).max() > 1e-3 and np.abs(a[2] - a[3]).max() > 1e-3
    assert trace(tiny_llama(n_head=4, n_kv_head=1), [1, 2, 3]).kv_heads.tolist() == [0, 0, 0, 0]
    assert trace(tiny_llama(n_head=4, n_kv_head=4), [1, 2, 3]).kv_heads.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("fmt", ["int8", "bf16"])
def test_a_quantized_llama_is_traced_as_it_computes(fmt):
    model = tiny_llama().quantize(fmt)
    ids = model.tokenizer.encode("ROMEO:\nBut")
    tr = trace(model, ids)
    np.testing.assert_allclose(tr.logits, model.forward(ids[None])[0], rtol=0, atol=5e-5)
    plain = trace(tiny_llama(), ids)
    assert np.abs(tr.logits - plain.logits).max() > 1e-4             # the rounded weights, not the float ones


def test_llama_one_token_and_too_long():
    model = tiny_llama(block_size=8)
    tr = trace(model, model.tokenizer.encode("R"))
    assert tr.attention[0].shape == (4, 1, 1) and np.all(tr.attention[0] == 1.0)
    with pytest.raises(ValueError, match="block_size"):
        trace(model, model.tokenizer.encode("ROMEO: But"))


@pytest.mark.parametrize("make, targets", [(tiny_model, ("attn.c_attn", "attn.c_proj")),
                                           (tiny_llama, ("q_proj", "v_proj", "down_proj"))])
def test_a_model_with_lora_adapters_is_traced_with_them(make, targets):
    """A fine-tuned model's adapters count: the trace is of W + (α/r)·B A, not of the base W."""
    from numformer.model.adapters import LoRAConfig

    base = make()
    model = type(base)(base.config, lora=LoRAConfig(2, 4.0, targets), init=False)
    model.load_state_dict({**base.state_dict(), **{k: np.random.default_rng(1).normal(0, 0.3, v.shape)
                                                   for k, v in model.adapters.items()}})
    model.eval()
    ids = base.tokenizer.encode("ROMEO:\nBut")
    expected = model.forward(ids[None])[0]
    np.testing.assert_allclose(trace(model, ids).logits, expected, rtol=0, atol=2e-5)
    assert np.abs(trace(base, ids).logits - expected).max() > 1e-3      # the adapters change something
