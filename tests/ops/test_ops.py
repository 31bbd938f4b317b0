"""The op table: every op, several shapes and the edge cases, through one harness.

Each row runs three checks (see op_harness.py): against torch autograd in float64, against
central finite differences, and float32 against float64.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from numformer.ops import (attention, cross_entropy, dropout, embedding, gelu, layernorm, linear,
                           mha, residual, softmax)

from .op_harness import Case, check_against_torch, check_finite_differences, check_float32


# ---- torch references, written independently of the code under test -------------------------

def torch_causal(Tq, Tk):
    """Bottom-right aligned causal mask, spelt out: query i sees keys j <= Tk - Tq + i."""
    return torch.tensor([[j <= Tk - Tq + i for j in range(Tk)] for i in range(Tq)])


def torch_attention(q, k, v, causal=False, mask=None, dropout_p=0.0):
    """softmax(q kᵀ/√d + mask) v with −inf masking; a row with no allowed key gives 0."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        allowed = allowed & torch_causal(Tq, Tk)
    if mask is not None:
        allowed = allowed & mask
    allowed = allowed.expand(s.shape)
    any_key = allowed.any(dim=-1, keepdim=True)
    s = s.masked_fill(~allowed, float("-inf"))
    s = torch.where(any_key, s, torch.zeros_like(s))      # placeholder for empty rows...
    return (torch.softmax(s, dim=-1) * any_key) @ v        # ...whose probabilities are then 0


def torch_sdpa(q, k, v, causal=False, mask=None, dropout_p=0.0):
    """PyTorch's own fused attention, with the causal mask passed explicitly."""
    allowed = mask
    if causal:
        c = torch_causal(q.shape[-2], k.shape[-2])
        allowed = c if allowed is None else c & allowed
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def torch_mha(x, w_qkv, b_qkv, w_o, b_o, n_head, causal=True, mask=None):
    """torch's own multi-head attention, whose packed in_proj_weight is [W_q; W_k; W_v] like c_attn."""
    B, T, C = x.shape
    allowed = torch.ones(B, n_head, T, T, dtype=torch.bool)
    if causal:
        allowed = allowed & torch_causal(T, T)
    if mask is not None:
        allowed = allowed & mask
    xt = x.transpose(0, 1)                                 # (T, B, C): torch's default layout
    y, _ = F.multi_head_attention_forward(
        xt, xt, xt, C, n_head, w_qkv, b_qkv, None, None, False, 0.0, w_o, b_o,
        training=False, need_weights=False, attn_mask=~allowed.reshape(B * n_head, T, T))
    return y.transpose(0, 1)


def torch_linear(x, weight, bias):
    return F.linear(x, weight, bias)


def torch_embedding(ids, table):
    return F.embedding(ids, table)


def torch_layernorm(x, weight, bias, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def torch_gelu(x, approximate):
    return F.gelu(x, approximate=approximate)


def torch_cross_entropy(logits, targets, ignore_index=-1):
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=ignore_index)


# ---- input builders ---------------------------------------------------------------------------

def ints(low, high, shape):
    return lambda rng: rng.integers(low, high, size=shape)


def scaled(shape, lo, hi):
    """Uniform magnitudes in [lo, hi) with random signs."""
    return lambda rng: rng.uniform(lo, hi, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def clustered(shape, at, spread):
    """Values near +at or −at: large magnitudes whose softmax is still far from one-hot."""
    return lambda rng: rng.choice([-at, at], size=shape) + rng.uniform(-spread, spread, size=shape)


def padding_mask(B, Tk, lengths):
    """(B, 1, 1, Tk) key padding mask: sequence b has lengths[b] real tokens."""
    m = np.zeros((B, 1, 1, Tk), dtype=bool)
    for b, n in enumerate(lengths):
        m[b, ..., :n] = True
    return lambda rng: m


def mask_with_empty_row(shape, empty):
    """Random boolean mask, with the rows at `empty` (index tuples) allowing no key at all."""
    def build(rng):
        m = rng.random(shape) < 0.6
        m[..., 0] |= True                                  # every other row keeps a key
        for ix in empty:
            m[ix] = False
        return m
    return build


def targets_with_ignored(shape, V, ignore_index, frac=0.3):
    def build(rng):
        t = rng.integers(0, V, size=shape)
        t[rng.random(shape) < frac] = ignore_index
        t.reshape(-1)[0] = ignore_index
        return t
    return build


QKV = ("q", "k", "v")
MHA = ("x", "w_qkv", "b_qkv", "w_o", "b_o")


def mha_inputs(B, T, C, bias=True, mask=None):
    d = {"x": (B, T, C), "w_qkv": (3 * C, C), "b_qkv": (3 * C,) if bias else None,
         "w_o": (C, C), "b_o": (C,) if bias else None}
    if mask is not None:
        d["mask"] = mask
    return d


CASES = [
    # linear: any number of leading dimensions, with and without bias
    Case("linear (B,T,C)", linear, {"x": (2, 3, 4), "weight": (5, 4), "bias": (5,)},
         ("x", "weight", "bias"), torch_linear),
    Case("linear 2-D no bias", linear, {"x": (3, 4), "weight": (2, 4), "bias": None},
         ("x", "weight", "bias"), torch_linear),
    Case("linear 1-D x", linear, {"x": (4,), "weight": (3, 4), "bias": (3,)},
         ("x", "weight", "bias"), torch_linear),
    Case("linear 4-D x, batch 1", linear, {"x": (1, 2, 3, 4), "weight": (6, 4), "bias": (6,)},
         ("x", "weight", "bias"), torch_linear),
    # embedding: repeated ids accumulate
    Case("embedding repeated ids", embedding,
         {"ids": np.array([[1, 1, 3], [0, 1, 3]]), "table": (5, 4)}, ("table",), torch_embedding),
    Case("embedding (B,T)", embedding, {"ids": ints(0, 7, (3, 5)), "table": (7, 3)},
         ("table",), torch_embedding),
    # attention
    Case("attention self", attention, {"q": (2, 3, 5, 4), "k": (2, 3, 5, 4), "v": (2, 3, 5, 6)},
         QKV, torch_sdpa),
    Case("attention causal", attention, {"q": (2, 2, 6, 4), "k": (2, 2, 6, 4), "v": (2, 2, 6, 3)},
         QKV, torch_sdpa, kwargs={"causal": True}),
    Case("attention causal T=1 batch 1 one head", attention,
         {"q": (1, 1, 1, 4), "k": (1, 1, 1, 4), "v": (1, 1, 1, 4)}, QKV, torch_sdpa,
         kwargs={"causal": True}),
    Case("attention no leading dims", attention, {"q": (3, 4), "k": (5, 4), "v": (5, 2)},
         QKV, torch_sdpa),
    Case("attention cross Tq<Tk", attention, {"q": (2, 2, 3, 4), "k": (2, 2, 7, 4), "v": (2, 2, 7, 5)},
         QKV, torch_sdpa),
    Case("attention cross Tq>Tk", attention, {"q": (2, 7, 4), "k": (2, 3, 4), "v": (2, 3, 5)},
         QKV, torch_sdpa),
    Case("attention causal Tq<Tk (KV cache) vs explicit mask", attention,
         {"q": (2, 2, 3, 4), "k": (2, 2, 7, 4), "v": (2, 2, 7, 5)}, QKV, torch_sdpa,
         kwargs={"causal": True}),
    Case("attention causal Tq<Tk, several query rows (a prompt onto a KV cache)", attention,
         {"q": (2, 2, 5, 4), "k": (2, 2, 9, 4), "v": (2, 2, 9, 3)}, QKV, torch_sdpa,
         kwargs={"causal": True}),
    Case("attention causal Tq=1 Tk=6 (one decode step)", attention,
         {"q": (2, 2, 1, 4), "k": (2, 2, 6, 4), "v": (2, 2, 6, 4)}, QKV, torch_sdpa,
         kwargs={"causal": True}),
    Case("attention causal Tq>Tk (first rows see nothing)", attention,
         {"q": (2, 6, 4), "k": (2, 4, 4), "v": (2, 4, 3)}, QKV, torch_attention,
         kwargs={"causal": True}),
    Case("attention padding mask", attention,
         {"q": (3, 2, 5, 4), "k": (3, 2, 5, 4), "v": (3, 2, 5, 4),
          "mask": padding_mask(3, 5, [5, 2, 4])}, QKV, torch_sdpa),
    Case("attention padding mask + causal", attention,
         {"q": (3, 2, 5, 4), "k": (3, 2, 5, 4), "v": (3, 2, 5, 4),
          "mask": padding_mask(3, 5, [5, 2, 1])}, QKV, torch_sdpa, kwargs={"causal": True}),
    Case("attention rows with no allowed key", attention,
         {"q": (2, 2, 4, 3), "k": (2, 2, 5, 3), "v": (2, 2, 5, 3),
          "mask": mask_with_empty_row((2, 2, 4, 5), [(0, 1, 2), (1, 0, 0), (1, 1, 3)])},
         QKV, torch_attention),
    Case("attention padding mask, empty rows of a fully padded sequence", attention,
         {"q": (2, 1, 3, 4), "k": (2, 1, 3, 4), "v": (2, 1, 3, 4),
          "mask": padding_mask(2, 3, [3, 0])}, QKV, torch_attention),
    Case("attention dropout", attention, {"q": (2, 2, 5, 4), "k": (2, 2, 5, 4), "v": (2, 2, 5, 3)},
         QKV, None, kwargs={"causal": True, "dropout_p": 0.4}, seed=7),
    # multi-head attention with fused QKV, against torch's own multi_head_attention_forward
    Case("mha causal", mha, mha_inputs(2, 5, 8), MHA, torch_mha, kwargs={"n_head": 2}),
    Case("mha one head", mha, mha_inputs(2, 4, 6), MHA, torch_mha, kwargs={"n_head": 1}),
    Case("mha T=1 batch 1", mha, mha_inputs(1, 1, 8), MHA, torch_mha, kwargs={"n_head": 4}),
    Case("mha no biases", mha, mha_inputs(2, 3, 6, bias=False), MHA, torch_mha,
         kwargs={"n_head": 3}),
    Case("mha bidirectional with padding mask", mha,
         mha_inputs(3, 4, 8, mask=padding_mask(3, 4, [4, 1, 3])), MHA, torch_mha,
         kwargs={"n_head": 2, "causal": False}),
    Case("mha dropout", mha, mha_inputs(2, 4, 8), MHA, None,
         kwargs={"n_head": 2, "dropout_p": 0.25}, seed=3),
    # layernorm
    Case("layernorm (B,T,C)", layernorm, {"x": (2, 3, 6), "weight": (6,), "bias": (6,)},
         ("x", "weight", "bias"), torch_layernorm),
    Case("layernorm T=1 batch 1, offset inputs", layernorm,
         {"x": lambda rng: 50.0 + 3.0 * rng.standard_normal((1, 1, 5)), "weight": (5,), "bias": (5,)},
         ("x", "weight", "bias"), torch_layernorm),
    Case("layernorm 1-D, eps 1e-2", layernorm, {"x": (7,), "weight": (7,), "bias": (7,)},
         ("x", "weight", "bias"), torch_layernorm, kwargs={"eps": 1e-2}),
    Case("layernorm no affine", layernorm, {"x": (4, 5), "weight": None, "bias": None},
         ("x", "weight", "bias"), torch_layernorm),
    # gelu, both forms, including |x| >= 20
    Case("gelu tanh", gelu, {"x": (3, 4, 5)}, ("x",), torch_gelu, kwargs={"approximate": "tanh"}),
    Case("gelu exact", gelu, {"x": lambda rng: 3 * rng.standard_normal((4, 25))}, ("x",), torch_gelu,
         kwargs={"approximate": "none"}),
    Case("gelu tanh |x| >= 20", gelu, {"x": scaled((4, 10), 20, 60)}, ("x",), torch_gelu,
         kwargs={"approximate": "tanh"}),
    Case("gelu exact |x| >= 20", gelu, {"x": scaled((4, 10), 20, 60)}, ("x",), torch_gelu,
         kwargs={"approximate": "none"}),
    Case("gelu tanh mid-tail 3<|x|<12", gelu, {"x": scaled((6, 10), 3, 12)}, ("x",), torch_gelu,
         kwargs={"approximate": "tanh"}),
    Case("gelu exact mid-tail 3<|x|<12", gelu, {"x": scaled((6, 10), 3, 12)}, ("x",), torch_gelu,
         kwargs={"approximate": "none"}),
    # softmax
    Case("softmax last axis", softmax, {"x": (3, 4, 6)}, ("x",),
         lambda x, axis=-1: torch.softmax(x, dim=axis)),
    Case("softmax axis 0", softmax, {"x": (5, 3)}, ("x",),
         lambda x, axis=-1: torch.softmax(x, dim=axis), kwargs={"axis": 0}),
    Case("softmax |x| >= 20", softmax, {"x": clustered((4, 6), 30.0, 2.0)}, ("x",),
         lambda x, axis=-1: torch.softmax(x, dim=axis)),
    Case("softmax near-ties at 1000", softmax,
         {"x": lambda rng: 1000.0 + rng.standard_normal((3, 5))}, ("x",),
         lambda x, axis=-1: torch.softmax(x, dim=axis)),
    # cross-entropy
    Case("cross_entropy (B,T,V)", cross_entropy,
         {"logits": (2, 3, 7), "targets": ints(0, 7, (2, 3))}, ("logits",), torch_cross_entropy,
         loss=True),
    Case("cross_entropy ignore_index=-1", cross_entropy,
         {"logits": (4, 5, 6), "targets": targets_with_ignored((4, 5), 6, -1)}, ("logits",),
         torch_cross_entropy, loss=True),
    Case("cross_entropy ignore_index=-100, 2-D", cross_entropy,
         {"logits": (9, 4), "targets": targets_with_ignored((9,), 4, -100)}, ("logits",),
         torch_cross_entropy, kwargs={"ignore_index": -100}, loss=True),
    Case("cross_entropy large logits", cross_entropy,
         {"logits": scaled((3, 8), 20, 500), "targets": ints(0, 8, (3,))}, ("logits",),
         torch_cross_entropy, loss=True),
    Case("cross_entropy batch 1 T=1", cross_entropy,
         {"logits": (1, 1, 5), "targets": np.array([[3]])}, ("logits",), torch_cross_entropy,
         loss=True),
    # dropout (torch's RNG cannot reproduce our mask: finite differences here, torch in test_dropout.py)
    Case("dropout p=0.3", dropout, {"x": (4, 6)}, ("x",), None, kwargs={"p": 0.3}, seed=11),
    Case("dropout p=0", dropout, {"x": (4, 6)}, ("x",), lambda x, p, training=True: x,
         kwargs={"p": 0.0}, seed=11),
    Case("dropout eval", dropout, {"x": (2, 3, 4)}, ("x",), lambda x, p, training=True: x,
         kwargs={"p": 0.5, "training": False}, seed=11),
    # residual
    Case("residual", residual, {"x": (2, 3, 4), "fx": (2, 3, 4)}, ("x", "fx"),
         lambda x, fx: x + fx),
]

TORCH_CASES = [c for c in CASES if c.torch_fn is not None]


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_against_torch_float64(case):
    check_against_torch(case)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_finite_differences(case):
    check_finite_differences(case)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_agrees_with_float64(case):
    check_float32(case)


def test_every_op_has_a_row():
    import numformer.ops as ops

    covered = {c.op.__name__.rsplit(".", 1)[1] for c in CASES}
    assert covered == set(ops.__all__) - {"positional"}   # positional has no backward: test_positional.py


BLOCKED_CASES = [c for c in TORCH_CASES if c.op in (attention, mha, gelu)]


@pytest.mark.parametrize("case", BLOCKED_CASES, ids=str)
def test_blocked_and_chunked_paths_against_torch(case, monkeypatch):
    """Attention works through blocks of batch items or heads, GELU through slices of elements,
    once the arrays are large. Tiny block and slice sizes send the table's small shapes through
    every branch of that code (several blocks along axis 0, heads of one item along axis 1,
    several GELU slices with a ragged last one)."""
    import numformer.ops.attention as attention_mod
    import numformer.ops.gelu as gelu_mod

    monkeypatch.setattr(attention_mod, "_BLOCK", 7)
    monkeypatch.setattr(gelu_mod, "_CHUNK", 5)
    check_against_torch(case)


CAUSAL_CASES = [c for c in TORCH_CASES if c.op in (attention, mha) and c.kwargs.get("causal", c.op is mha)]


@pytest.mark.parametrize("case", CAUSAL_CASES, ids=str)
@pytest.mark.parametrize("block", [7, 1 << 17])
def test_causal_query_chunks_against_torch(case, block, monkeypatch):
    """Causal attention takes the query rows in chunks that see only the keys before them. With
    chunks of 2 rows the table's causal shapes split into several chunks, including (Tq > Tk)
    chunks that see no key at all, and their keys' gradients are summed over chunks."""
    import numformer.ops.attention as attention_mod

    monkeypatch.setattr(attention_mod, "_QROWS", 2)
    monkeypatch.setattr(attention_mod, "_BLOCK", block)
    check_against_torch(case)
    monkeypatch.setattr(attention_mod, "_QROWS", 1)      # one row per chunk: the most chunks
    check_against_torch(case)


def test_causal_query_chunks_really_skip_the_masked_keys(monkeypatch):
    """Guards the test above: the chunks cover every row once, each sees exactly the keys the
    causal rule allows its last row, and the first rows of a Tq > Tk case see none."""
    import numformer.ops.attention as attention_mod

    monkeypatch.setattr(attention_mod, "_QROWS", 2)
    assert attention_mod._query_chunks(6, 6, True) == [(0, 2, 2), (2, 4, 4), (4, 6, 6)]
    assert attention_mod._query_chunks(6, 4, True) == [(0, 2, 0), (2, 4, 2), (4, 6, 4)]
    assert attention_mod._query_chunks(4, 9, True) == [(0, 2, 7), (2, 4, 9)]
    assert attention_mod._query_chunks(6, 6, False) == [(0, 6, 6)]
    assert attention_mod._query_chunks(3, 3, True) == [(0, 3, 3)]     # shorter than two chunks
    assert attention_mod._query_chunks(5, 9, True)[:2] == [(0, 2, 6), (2, 4, 8)]   # the new case above


def test_the_blocked_attention_really_splits_the_work(monkeypatch):
    """Guards the test above: with _BLOCK = 7 the scores of these shapes span several blocks."""
    import numformer.ops.attention as attention_mod

    monkeypatch.setattr(attention_mod, "_BLOCK", 7)
    blocks = attention_mod._blocks((2, 3, 4, 5), 6)        # 3 heads x 4 x 6 = 72 > 7 per item
    assert len(blocks) > 2 and any(isinstance(b[0], int) for b in blocks)


class _Recompute:
    """An attention op called with keep_probs=False: backward recomputes P from q and k."""

    def __init__(self, op):
        self.op = op

    def forward(self, *args, **kwargs):
        return self.op.forward(*args, keep_probs=False, **kwargs)

    def backward(self, *args, **kwargs):
        return self.op.backward(*args, **kwargs)


ATTENTION_CASES = [c for c in TORCH_CASES if c.op in (attention, mha)]


def _arrays(tree):
    """Every ndarray in a nest of tuples and lists (an op's cache)."""
    if isinstance(tree, np.ndarray):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [a for t in tree for a in _arrays(t)]
    return []


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
@pytest.mark.parametrize("rows, block", [(64, 1 << 17), (2, 7), (1, 1 << 17)])
def test_attention_without_kept_probs_matches_torch_and_the_kept_path_bit_for_bit(case, rows, block, monkeypatch):
    """keep_probs=False (what the GPT uses) keeps two numbers per query row instead of P and
    recomputes P in backward: every attention and MHA row of the table against torch, through
    query chunks (causal rows) and blocks, and the same bits as the path that keeps P, since the
    recomputation repeats forward's operations on the same scores."""
    import dataclasses

    import numformer.ops.attention as attention_mod

    from .op_harness import make_inputs, random_dout, run_backward, run_forward

    monkeypatch.setattr(attention_mod, "_QROWS", rows)
    monkeypatch.setattr(attention_mod, "_BLOCK", block)
    lean = dataclasses.replace(case, op=_Recompute(case.op))
    check_against_torch(lean)
    for dtype in (np.float64, np.float32):
        inputs, rng = make_inputs(case, dtype)
        y1, c1 = run_forward(case, inputs)
        y2, c2 = run_forward(lean, inputs)
        dout = random_dout(y1, rng)
        g1, g2 = run_backward(case, dout, c1), run_backward(lean, dout, c2)
        np.testing.assert_array_equal(y1, y2)
        for name in case.grads:
            if g1[name] is None:
                assert g2[name] is None
            else:
                np.testing.assert_array_equal(g1[name], g2[name], err_msg=f"d{name}")
        Tq, Tk = (inputs["q"].shape[-2], inputs["k"].shape[-2]) if "q" in inputs else (inputs["x"].shape[-2],) * 2
        if 2 < Tk and Tq <= Tk:     # two numbers per query row instead of up to Tk probabilities
            kept = sum(a.nbytes for a in _arrays(c1))
            lean_kept = sum(a.nbytes for a in _arrays(c2))
            assert lean_kept < kept
