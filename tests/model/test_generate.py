"""Sampling: the KV cache gives the logits of an uncached forward pass, also after the window slides."""

import json

import numpy as np
import pytest

from numformer import GPT, GPTConfig
from numformer.commands.sample import StreamDecoder
from numformer.data.tokenizer import BPETokenizer
from numformer.model.generate import generate_tokens, sample_next
from numformer.reference.llama_tokenizers import metaspace_bpe
from tests.helpers import TEXT

from .test_gpt import randomize


def model_for(pos, dtype=np.float64, block=8):
    cfg = GPTConfig(vocab_size=11, block_size=block, n_layer=2, n_head=2, n_embd=8, pos_encoding=pos)
    m = GPT(cfg, dtype=dtype, seed=1)
    randomize(m, 2)
    return m


@pytest.mark.parametrize("pos", ["sinusoidal", "learned"])
def test_kv_cached_logits_equal_uncached_logits(pos):
    m = model_for(pos)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 11, size=(2, 8))
    full = m.forward(idx)                                  # (B, T, V) in one pass
    cache = m.new_kv_cache(2)
    parts = [m.forward_cached(idx[:, :3], cache)]          # a prompt of 3 tokens ...
    for t in range(3, 8):                                  # ... then one token at a time
        parts.append(m.forward_cached(idx[:, t:t + 1], cache))
    cached = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(cached, full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pos", ["sinusoidal", "learned"])
def test_generation_with_cache_equals_without_cache_past_the_window(pos):
    """Greedy decoding 20 tokens with block_size 8 slides the window 16 times."""
    m = model_for(pos)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    with_cache = m.generate(prompt, 20, temperature=0, use_cache=True)
    without = m.generate(prompt, 20, temperature=0, use_cache=False)
    np.testing.assert_array_equal(with_cache, without)
    assert with_cache.shape == (2, 23)
    # and the uncached path is the plain definition: argmax of the last position's logits
    seq = prompt
    for _ in range(20):
        nxt = m.forward(seq[:, -8:])[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(seq, without)


def test_sampling_with_the_same_seed_is_reproducible_and_float32_works():
    m = model_for("sinusoidal", dtype=np.float32)
    a = m.generate(np.array([[1]]), 15, temperature=1.0, top_k=5, rng=np.random.default_rng(3))
    b = m.generate(np.array([[1]]), 15, temperature=1.0, top_k=5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


def test_top_k_and_top_p_restrict_the_support():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    draws = np.array([sample_next(logits, 1.0, top_k=2, rng=rng)[0] for _ in range(400)])
    assert set(draws) == {0, 1}
    # nucleus 0.7: tokens 0 (mass before it 0) and 1 (mass before it 0.5 < 0.7) stay; 2 (0.8) goes
    draws = np.array([sample_next(logits, 1.0, top_p=0.7, rng=rng)[0] for _ in range(400)])
    assert set(draws) == {0, 1}
    assert abs((draws == 0).mean() - 0.5 / 0.8) < 0.08
    # nucleus smaller than the top token keeps just that one
    assert {sample_next(logits, 1.0, top_p=0.1, rng=rng)[0] for _ in range(50)} == {0}
    # temperature 0 is greedy
    assert sample_next(logits, 0.0)[0] == 0
    # without restrictions the frequencies follow the probabilities
    draws = np.array([sample_next(logits, 1.0, rng=rng)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_generate_tokens_yields_one_array_per_step():
    m = model_for("learned")
    steps = list(generate_tokens(m, np.array([[0, 1]]), 4, temperature=0))
    assert len(steps) == 4 and all(s.shape == (1,) for s in steps)


def test_stream_decoder_holds_back_a_split_character_and_writes_each_piece_once():
    text = "猫坐在垫子上。The cat sat on the mat. 猫" * 20
    tok = BPETokenizer.train(text, 300)
    ids = tok.encode("猫坐在垫子上。cat 垫")
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == "猫坐在垫子上。cat 垫"
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("style", ["metaspace", "normalizer"])
def test_stream_decoder_keeps_the_spaces_of_a_metaspace_tokenizer(style):
    """Llama 2's decoder drops the space before the first token of each decode call; streamed
    behind the token before it, every piece keeps its own ("Speak" "▁now" is "Speak now")."""
    tok = BPETokenizer.from_hf_document(json.loads(metaspace_bpe(TEXT, 600, style).to_str()))
    ids = tok.encode("First Citizen: Before we proceed any further, 我爱 🙂 hear me speak.\n  All: Speak")
    for cut in (1, 3, 7):
        dec = StreamDecoder(tok, context=int(ids[cut - 1]))
        streamed = "".join([dec.push(i) for i in ids[cut:]] + [dec.flush()])
        assert tok.decode(ids[:cut]) + streamed == tok.decode(ids)
