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

from .conftest import tiny_model

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
