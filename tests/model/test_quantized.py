"""A GPT or Llama with quantized weights (model.quantize, load(quantize=)): it decodes the same
tokens as float32 decoding of its dequantized weights, holds no float32 copy of them, evaluates
as they do, and refuses what it cannot do (train, save, float64) in one line."""

import gc
import weakref

import numpy as np
import pytest

from numformer import GPT, GPTConfig
from numformer.data.tokenizer import CharTokenizer
from numformer.model import load
from numformer.model.adapters import LoRAConfig
from numformer.model.config import LlamaConfig
from numformer.model.evaluate import evaluate_text
from numformer.model.llama import Llama
from numformer.model.params import GPT2, LINEAR, LLAMA, WEIGHT, family_of
from numformer.ops import quant
from numformer.ops.fast import dispatch, quantized
from tests.helpers import TEXT, one_line

FORMATS = ["int8", "bf16"]


def trained_like(seed=0, n_embd=48, vocab=65, block=96, arch="gpt2", **kw):
    """A model whose weights are large enough that its greedy choices are clear: std 0.2, not 0.02.
    n_embd 48 makes each weight row one block of 32 and a short one of 16. arch "llama" (untied
    head, two key/value heads for four query heads) or "llama tied"."""
    if arch == "gpt2":
        m = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=3, n_embd=n_embd, **kw), seed=seed)
    else:
        m = Llama(LlamaConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=4, n_kv_head=2, n_embd=n_embd,
                              n_hidden=80, tie_embeddings=arch == "llama tied", **kw), seed=seed)
    m.params.flat[...] *= 10.0
    return m


ARCHS = ["gpt2", "llama", "llama tied"]


@pytest.mark.parametrize("native", ["native", "numpy"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_decoding_equals_float32_decoding_of_the_dequantized_weights(arch, fmt, native):
    """50 tokens after a 20-token prompt (more rows than the row kernels take: the prompt goes
    through the tiles, each later token through the kernels); batch 2, and without the cache."""
    with dispatch.overridden(numba=native == "native"):
        q = trained_like(arch=arch).quantize(fmt)
        d = q.dequantized()
        assert d.quantization == "none" and not d.quantized
        prompt = np.random.default_rng(1).integers(0, 65, size=(2, 20))
        assert 2 * 20 > quantized.ROWS >= 2
        a = q.generate(prompt, 50, temperature=0)
        b = d.generate(prompt, 50, temperature=0)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(q.generate(prompt[:1], 50, temperature=0, use_cache=False), b[:1])
        # and the logits themselves agree to float32 rounding
        la, lb = q.forward(prompt), d.forward(prompt)
        assert np.abs(la - lb).max() <= 1e-5 * np.abs(lb).max()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_the_weights_are_stored_quantized_and_the_float32_ones_freed(arch, fmt):
    m = trained_like(arch=arch)
    n = m.num_params()
    float_bytes = m.weight_bytes()
    flat = weakref.ref(m.params.flat)
    m.quantize(fmt)
    gc.collect()
    assert flat() is None                                   # the float32 buffer is gone
    family = family_of(m.config)
    token = GPT2.name("wte") if arch == "gpt2" else LLAMA.name("model.embed_tokens")
    names = {p.name for p in family.params(m.config) if p.kind == LINEAR and p.part == WEIGHT} | {token}
    assert (LLAMA.name("lm_head") in names) == (arch == "llama")
    assert set(m.quantized) == names
    assert not names & set(m.params.views)                  # the float buffer keeps the rest only
    for w in m.quantized.values():
        if fmt == "int8":
            assert w.q.dtype == np.int8 and w.d.dtype == np.float32 and w.d.shape[-1] == -(-w.q.shape[-1] // 32)
        else:
            assert w.bits.dtype == np.uint16
    assert m.num_params() == n
    per_weight = 1 + 4 / 32 if fmt == "int8" else 2
    quantized_count = sum(int(np.prod(w.shape)) for w in m.quantized.values())
    blocks = sum(w.d.size for w in m.quantized.values()) if fmt == "int8" else 0
    expected = (quantized_count * (1 if fmt == "int8" else 2) + 4 * blocks) + 4 * m.params.size
    assert m.weight_bytes() == expected
    assert m.weight_bytes() < float_bytes * (per_weight / 4 + 0.1)


def test_the_tied_embedding_reads_the_quantized_table():
    """The lookup gives deq(wte)[idx]: the embedding and the head share the one quantized table."""
    m = trained_like(pos_encoding="learned").quantize("int8")
    idx = np.array([[3, 64, 0, 3]])
    x, _ = m._embed(idx, 2)
    wte = quant.dequantize(m.quantized[GPT2.name("wte")])
    np.testing.assert_array_equal(x, wte[idx] + m.params[GPT2.name("wpe")][2:6])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_load_quantize_and_evaluation(tmp_path, arch, fmt):
    """load(quantize=) (numformer.model.load, GPT.load, Llama.load) gives the model quantize()
    gives; its loss on a text (threads: many rows, the tiles) is the dequantized model's to
    float32 rounding."""
    tok = CharTokenizer.from_text(TEXT)
    m = trained_like(vocab=tok.vocab_size, arch=arch)
    m.save(tmp_path / "ckpt", tokenizer=tok.to_json())
    cls = GPT if arch == "gpt2" else Llama
    q = load(tmp_path / "ckpt", quantize=fmt)
    assert type(q) is cls and q.quantization == fmt and q.tokenizer is not None
    direct = cls.load(tmp_path / "ckpt").quantize(fmt)
    loaded = cls.load(tmp_path / "ckpt", quantize=fmt)       # quantized as read (load_quantized)
    for name, w in loaded.quantized.items():
        for a, b in zip(w, direct.quantized[name]):
            np.testing.assert_array_equal(a, b)
    assert list(loaded.params.views) == list(direct.params.views)   # the rest: norms, biases, positions
    np.testing.assert_array_equal(loaded.params.flat, direct.params.flat)
    for name, w in q.quantized.items():
        for a, b in zip(w, direct.quantized[name]):
            np.testing.assert_array_equal(a, b)
    d = q.dequantized()
    a = evaluate_text(q, TEXT[:2000], threads=2)
    b = evaluate_text(d, TEXT[:2000], threads=2)
    assert a["tokens"] == b["tokens"] and abs(a["loss"] - b["loss"]) <= 1e-5 * b["loss"]
    c = evaluate_text(load(tmp_path / "ckpt"), TEXT[:2000], threads=2)
    assert a["loss"] != c["loss"]                            # the weights did change


def test_a_checkpoint_with_adapters_loads_quantized_with_them_merged(tmp_path):
    """load(quantize=) of a LoRA checkpoint merges the adapters first, as quantize() does."""
    tok = CharTokenizer.from_text(TEXT)
    base = trained_like(vocab=tok.vocab_size)
    m = GPT(base.config, lora=LoRAConfig(2, 4.0, ("attn.c_attn", "mlp.c_fc")))
    m.params.flat[...] = base.params.flat
    m.adapters.flat[...] = np.random.default_rng(1).normal(0, 0.3, m.adapters.size)
    m.save(tmp_path / "lora", tokenizer=tok.to_json())
    loaded, direct = GPT.load(tmp_path / "lora", quantize="int8"), GPT.load(tmp_path / "lora").quantize("int8")
    assert loaded.lora is None and set(loaded.quantized) == set(direct.quantized)
    for name, w in loaded.quantized.items():
        for a, b in zip(w, direct.quantized[name]):
            np.testing.assert_array_equal(a, b)
    unmerged = quant.quantize(base.params["transformer.h.0.attn.c_attn.weight"], "int8")
    assert not np.array_equal(loaded.quantized["transformer.h.0.attn.c_attn.weight"].q, unmerged.q)   # merged


def test_adapters_are_merged_before_quantizing():
    base = trained_like()
    m = GPT(base.config, lora=LoRAConfig(2, 4.0, ("attn.c_attn", "mlp.c_fc")))
    m.params.flat[...] = base.params.flat
    m.adapters.flat[...] = np.random.default_rng(0).normal(0, 0.3, m.adapters.size)
    prompt = np.array([[1, 2, 3]])
    expected = m.generate(prompt, 20, temperature=0)
    q = m.quantize("bf16")
    assert q.lora is None and q.adapters is None
    np.testing.assert_array_equal(q.generate(prompt, 20, temperature=0), expected)   # bf16 keeps these choices


def test_the_reference_ops_decode_the_same_tokens():
    """ops="reference" dequantizes each weight where it is used (ops.linear as the formula reads)."""
    m = trained_like()
    ref = GPT(m.config, init=False, ops="reference")
    ref.params.flat[...] = m.params.flat
    q, ref = m.quantize("int8"), ref.quantize("int8")
    prompt = np.array([[5, 6, 7]])
    np.testing.assert_array_equal(ref.generate(prompt, 30, temperature=0), q.generate(prompt, 30, temperature=0))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_what_a_quantized_model_refuses(tmp_path, arch):
    m = trained_like(arch=arch).quantize("int8")
    with pytest.raises(ValueError) as e:
        m.quantize("bf16")
    assert "already" in one_line(e)
    (logits, loss), tape = m.forward_tape(np.array([[1, 2]]), np.array([[2, 3]]))
    assert np.isfinite(loss)
    with pytest.raises(RuntimeError) as e:
        m.backward_tape(tape)
    assert "inference only" in one_line(e)
    with pytest.raises(ValueError) as e:
        m.save(tmp_path / "x")
    assert "quantize=" in one_line(e) and not (tmp_path / "x").exists()
    with pytest.raises(ValueError) as e:
        type(m)(m.config, dtype=np.float64).quantize("int8")
    assert "float32" in one_line(e)
    for bad in ("int4", "fp8", ""):
        with pytest.raises(ValueError) as e:
            trained_like(arch=arch).quantize(bad)
        assert "none, bf16, int8" in one_line(e)
        with pytest.raises(ValueError) as e:
            load(tmp_path / "nowhere", quantize=bad)            # refused before anything is read
        assert "none, bf16, int8" in one_line(e)
    assert trained_like(arch=arch).quantize("none").quantization == "none"
