"""The op table: every op, several shapes and the edge cases, as rows of one table.

One harness (numformer.ops.harness) runs every row against both op sets, the reference
(numformer.ops) and the fast one (numformer.ops.fast):

- forward values and the gradients of (y ⊙ dy).sum() against PyTorch autograd in float64
  (`torch` names the function in numformer.reference.ops);
- the same gradients against central finite differences (no PyTorch needed);
- float32 against float64;
- and, for the ops whose fast version differs, fast against reference in float32 and float64
  with the block and chunk sizes of FAST_SIZES, so that small shapes cross every block and
  chunk boundary.

The tests (tests/ops/test_ops.py) and `numformer check` both run this table. Adding an op means
adding a row.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Case:
    id: str
    op: str                                  # the op's module name in an op set: "attention"
    inputs: dict                             # name -> shape (standard normal), callable(rng), array, or None
    grads: tuple                             # names of backward's outputs, in its return order
    torch: str | None = None                 # function in numformer.reference.ops; None: no torch check
    kwargs: dict = field(default_factory=dict)
    seed: int | None = None                  # forward gets rng=default_rng(seed) afresh each call
    loss: bool = False                       # scalar output; backward(cache, dloss)
    fd_tol: float = 1e-6                     # tolerance of the finite-difference comparison

    def __str__(self):
        return self.id


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
LORA = ("x", "weight", "bias", "lora_a", "lora_b")


def mha_inputs(B, T, C, mask=None, C_kv=None):
    """q (B, T, C) and k, v (B, T, C_kv) (default C), as the projections make them."""
    C_kv = C if C_kv is None else C_kv
    d = {"q": (B, T, C), "k": (B, T, C_kv), "v": (B, T, C_kv)}
    if mask is not None:
        d["mask"] = mask
    return d


def shared_heads(B, n_kv_head, g, Tq, Tk, hs, d_v=None):
    """q (B, n_kv_head, g, Tq, hs), k and v (B, n_kv_head, 1, Tk, ·): g query heads per key/value
    head, as numformer.ops.mha gives grouped-query attention to the attention op."""
    return {"q": (B, n_kv_head, g, Tq, hs), "k": (B, n_kv_head, 1, Tk, hs), "v": (B, n_kv_head, 1, Tk, d_v or hs)}


CASES = [
    # linear: any number of leading dimensions, with and without bias
    Case("linear (B,T,C)", "linear", {"x": (2, 3, 4), "weight": (5, 4), "bias": (5,)},
         ("x", "weight", "bias"), "linear"),
    Case("linear 2-D no bias", "linear", {"x": (3, 4), "weight": (2, 4), "bias": None},
         ("x", "weight", "bias"), "linear"),
    Case("linear 1-D x", "linear", {"x": (4,), "weight": (3, 4), "bias": (3,)},
         ("x", "weight", "bias"), "linear"),
    Case("linear 4-D x, batch 1", "linear", {"x": (1, 2, 3, 4), "weight": (6, 4), "bias": (6,)},
         ("x", "weight", "bias"), "linear"),
    # lora: a linear map plus (α/r)·B A x; ranks 1, 2 and C_in; B random so that dA is not zero
    Case("lora (B,T,C) rank 2", "lora",
         {"x": (2, 3, 4), "weight": (5, 4), "bias": (5,), "lora_a": (2, 4), "lora_b": (5, 2)},
         LORA, "lora", kwargs={"alpha": 4.0}),
    Case("lora 2-D no bias rank 1", "lora",
         {"x": (3, 6), "weight": (2, 6), "bias": None, "lora_a": (1, 6), "lora_b": (2, 1)},
         LORA, "lora", kwargs={"alpha": 0.5}),
    Case("lora rank = C_in, T=1 batch 1", "lora",
         {"x": (1, 1, 3), "weight": (7, 3), "bias": (7,), "lora_a": (3, 3), "lora_b": (7, 3)},
         LORA, "lora", kwargs={"alpha": 16.0}),
    # embedding: repeated ids accumulate
    Case("embedding repeated ids", "embedding",
         {"ids": np.array([[1, 1, 3], [0, 1, 3]]), "table": (5, 4)}, ("table",), "embedding"),
    Case("embedding (B,T)", "embedding", {"ids": ints(0, 7, (3, 5)), "table": (7, 3)},
         ("table",), "embedding"),
    # attention
    Case("attention self", "attention", {"q": (2, 3, 5, 4), "k": (2, 3, 5, 4), "v": (2, 3, 5, 6)},
         QKV, "sdpa"),
    Case("attention causal", "attention", {"q": (2, 2, 6, 4), "k": (2, 2, 6, 4), "v": (2, 2, 6, 3)},
         QKV, "sdpa", kwargs={"causal": True}),
    Case("attention causal T=1 batch 1 one head", "attention",
         {"q": (1, 1, 1, 4), "k": (1, 1, 1, 4), "v": (1, 1, 1, 4)}, QKV, "sdpa",
         kwargs={"causal": True}),
    Case("attention no leading dims", "attention", {"q": (3, 4), "k": (5, 4), "v": (5, 2)},
         QKV, "sdpa"),
    Case("attention cross Tq<Tk", "attention", {"q": (2, 2, 3, 4), "k": (2, 2, 7, 4), "v": (2, 2, 7, 5)},
         QKV, "sdpa"),
    Case("attention cross Tq>Tk", "attention", {"q": (2, 7, 4), "k": (2, 3, 4), "v": (2, 3, 5)},
         QKV, "sdpa"),
    Case("attention causal Tq<Tk (KV cache) vs explicit mask", "attention",
         {"q": (2, 2, 3, 4), "k": (2, 2, 7, 4), "v": (2, 2, 7, 5)}, QKV, "sdpa",
         kwargs={"causal": True}),
    Case("attention causal Tq<Tk, several query rows (a prompt onto a KV cache)", "attention",
         {"q": (2, 2, 5, 4), "k": (2, 2, 9, 4), "v": (2, 2, 9, 3)}, QKV, "sdpa",
         kwargs={"causal": True}),
    Case("attention causal Tq=1 Tk=6 (one decode step)", "attention",
         {"q": (2, 2, 1, 4), "k": (2, 2, 6, 4), "v": (2, 2, 6, 4)}, QKV, "sdpa",
         kwargs={"causal": True}),
    Case("attention causal Tq>Tk (first rows see nothing)", "attention",
         {"q": (2, 6, 4), "k": (2, 4, 4), "v": (2, 4, 3)}, QKV, "attention",
         kwargs={"causal": True}),
    Case("attention padding mask", "attention",
         {"q": (3, 2, 5, 4), "k": (3, 2, 5, 4), "v": (3, 2, 5, 4),
          "mask": padding_mask(3, 5, [5, 2, 4])}, QKV, "sdpa"),
    Case("attention padding mask + causal", "attention",
         {"q": (3, 2, 5, 4), "k": (3, 2, 5, 4), "v": (3, 2, 5, 4),
          "mask": padding_mask(3, 5, [5, 2, 1])}, QKV, "sdpa", kwargs={"causal": True}),
    Case("attention rows with no allowed key", "attention",
         {"q": (2, 2, 4, 3), "k": (2, 2, 5, 3), "v": (2, 2, 5, 3),
          "mask": mask_with_empty_row((2, 2, 4, 5), [(0, 1, 2), (1, 0, 0), (1, 1, 3)])},
         QKV, "attention"),
    Case("attention padding mask, empty rows of a fully padded sequence", "attention",
         {"q": (2, 1, 3, 4), "k": (2, 1, 3, 4), "v": (2, 1, 3, 4),
          "mask": padding_mask(2, 3, [3, 0])}, QKV, "attention"),
    Case("attention dropout", "attention", {"q": (2, 2, 5, 4), "k": (2, 2, 5, 4), "v": (2, 2, 5, 3)},
         QKV, None, kwargs={"causal": True, "dropout_p": 0.4}, seed=7),
    # shared key/value heads (grouped-query attention): k and v broadcast along q's group axis,
    # against torch's own broadcasting matmul, whose autograd sums the shared heads' gradients
    Case("attention shared kv heads, groups of 3, causal", "attention", shared_heads(2, 2, 3, 5, 5, 4, 3), QKV,
         "attention", kwargs={"causal": True}),
    Case("attention shared kv heads, one kv head (multi-query)", "attention", shared_heads(2, 1, 4, 6, 6, 4), QKV,
         "attention", kwargs={"causal": True}),
    Case("attention shared kv heads, Tq<Tk (KV cache)", "attention", shared_heads(2, 2, 2, 3, 7, 4), QKV,
         "attention", kwargs={"causal": True}),
    Case("attention shared kv heads, bidirectional, T=1 batch 1", "attention", shared_heads(1, 1, 2, 1, 1, 4), QKV,
         "attention"),
    Case("attention shared kv heads, dropout", "attention", shared_heads(2, 2, 2, 4, 4, 4), QKV, None,
         kwargs={"causal": True, "dropout_p": 0.3}, seed=5),
    # multi-head attention between the projections: heads split, attention, heads concatenated;
    # against torch's view/transpose and its own scaled_dot_product_attention
    Case("mha causal", "mha", mha_inputs(2, 5, 8), QKV, "mha", kwargs={"n_head": 2}),
    Case("mha one head", "mha", mha_inputs(2, 4, 6), QKV, "mha", kwargs={"n_head": 1}),
    Case("mha T=1 batch 1", "mha", mha_inputs(1, 1, 8), QKV, "mha", kwargs={"n_head": 4}),
    Case("mha three heads of 2", "mha", mha_inputs(2, 3, 6), QKV, "mha", kwargs={"n_head": 3}),
    Case("mha bidirectional with padding mask", "mha",
         mha_inputs(3, 4, 8, mask=padding_mask(3, 4, [4, 1, 3])), QKV, "mha",
         kwargs={"n_head": 2, "causal": False}),
    Case("mha dropout", "mha", mha_inputs(2, 4, 8), QKV, None,
         kwargs={"n_head": 2, "dropout_p": 0.25}, seed=3),
    # grouped-query attention (n_kv_head key/value heads) and RoPE, against torch's
    # scaled_dot_product_attention(enable_gqa=True) and a RoPE written as complex multiplication
    Case("mha grouped-query, 4 heads, 2 kv heads", "mha", mha_inputs(2, 5, 8, C_kv=4), QKV, "mha",
         kwargs={"n_head": 4, "n_kv_head": 2}),
    Case("mha multi-query, 3 heads, 1 kv head", "mha", mha_inputs(2, 4, 6, C_kv=2), QKV, "mha",
         kwargs={"n_head": 3, "n_kv_head": 1}),
    Case("mha RoPE", "mha", mha_inputs(2, 5, 8), QKV, "mha", kwargs={"n_head": 2, "rope_theta": 10_000.0}),
    Case("mha grouped-query with RoPE, θ 500,000", "mha", mha_inputs(2, 6, 16, C_kv=8), QKV, "mha",
         kwargs={"n_head": 4, "n_kv_head": 2, "rope_theta": 500_000.0}),
    Case("mha grouped-query with RoPE, T=1 batch 1", "mha", mha_inputs(1, 1, 8, C_kv=4), QKV, "mha",
         kwargs={"n_head": 2, "n_kv_head": 1, "rope_theta": 10_000.0}),
    Case("mha grouped-query, bidirectional with padding mask", "mha",
         mha_inputs(3, 4, 8, mask=padding_mask(3, 4, [4, 1, 3]), C_kv=4), QKV, "mha",
         kwargs={"n_head": 2, "n_kv_head": 1, "causal": False}),
    Case("mha grouped-query with RoPE, dropout", "mha", mha_inputs(2, 4, 8, C_kv=4), QKV, None,
         kwargs={"n_head": 4, "n_kv_head": 2, "rope_theta": 10_000.0, "dropout_p": 0.25}, seed=3),
    # layernorm
    Case("layernorm (B,T,C)", "layernorm", {"x": (2, 3, 6), "weight": (6,), "bias": (6,)},
         ("x", "weight", "bias"), "layernorm"),
    Case("layernorm T=1 batch 1, offset inputs", "layernorm",
         {"x": lambda rng: 50.0 + 3.0 * rng.standard_normal((1, 1, 5)), "weight": (5,), "bias": (5,)},
         ("x", "weight", "bias"), "layernorm"),
    Case("layernorm 1-D, eps 1e-2", "layernorm", {"x": (7,), "weight": (7,), "bias": (7,)},
         ("x", "weight", "bias"), "layernorm", kwargs={"eps": 1e-2}),
    Case("layernorm no affine", "layernorm", {"x": (4, 5), "weight": None, "bias": None},
         ("x", "weight", "bias"), "layernorm"),
    # rmsnorm: LayerNorm without the mean, eps inside the root, as torch's rms_norm
    Case("rmsnorm (B,T,C)", "rmsnorm", {"x": (2, 3, 6), "weight": (6,)}, ("x", "weight"), "rmsnorm"),
    Case("rmsnorm T=1 batch 1, offset inputs", "rmsnorm",
         {"x": lambda rng: 50.0 + 3.0 * rng.standard_normal((1, 1, 5)), "weight": (5,)}, ("x", "weight"),
         "rmsnorm"),
    Case("rmsnorm 1-D, eps 1e-2", "rmsnorm", {"x": (7,), "weight": (7,)}, ("x", "weight"), "rmsnorm",
         kwargs={"eps": 1e-2}),
    Case("rmsnorm no gain, eps 1e-5", "rmsnorm", {"x": (4, 5), "weight": None}, ("x", "weight"), "rmsnorm",
         kwargs={"eps": 1e-5}),
    Case("rmsnorm small rows (eps matters)", "rmsnorm", {"x": lambda rng: 1e-3 * rng.standard_normal((3, 4)),
                                                        "weight": (4,)}, ("x", "weight"), "rmsnorm",
         kwargs={"eps": 1e-6}),
    # rope: each pair (x_i, x_{i+hs/2}) turned by p·θ^(−2i/hs), against torch's complex multiplication
    Case("rope (B,nh,T,hs)", "rope", {"x": (2, 3, 5, 8)}, ("x",), "rope"),
    Case("rope start 7 (a KV cache's position), θ 500,000", "rope", {"x": (2, 2, 3, 6)}, ("x",), "rope",
         kwargs={"theta": 500_000.0, "start": 7}),
    Case("rope T=1 batch 1 one head, hs 2, position 1000", "rope", {"x": (1, 1, 1, 2)}, ("x",), "rope",
         kwargs={"start": 1000}),
    Case("rope no leading dims, θ 1,000,000", "rope", {"x": (6, 4)}, ("x",), "rope",
         kwargs={"theta": 1_000_000.0}),
    # swiglu: SiLU(gate) ⊙ up, including |gate| >= 20
    Case("swiglu (B,T,H)", "swiglu", {"gate": (2, 3, 5), "up": (2, 3, 5)}, ("gate", "up"), "swiglu"),
    Case("swiglu |gate| >= 20", "swiglu", {"gate": scaled((4, 10), 20, 60), "up": (4, 10)}, ("gate", "up"),
         "swiglu"),
    Case("swiglu mid-tail 3<|gate|<12", "swiglu", {"gate": scaled((6, 10), 3, 12), "up": (6, 10)},
         ("gate", "up"), "swiglu"),
    Case("swiglu T=1 batch 1", "swiglu", {"gate": (1, 1, 7), "up": (1, 1, 7)}, ("gate", "up"), "swiglu"),
    # gelu, both forms, including |x| >= 20
    Case("gelu tanh", "gelu", {"x": (3, 4, 5)}, ("x",), "gelu", kwargs={"form": "tanh"}),
    Case("gelu exact", "gelu", {"x": lambda rng: 3 * rng.standard_normal((4, 25))}, ("x",), "gelu",
         kwargs={"form": "exact"}),
    Case("gelu tanh |x| >= 20", "gelu", {"x": scaled((4, 10), 20, 60)}, ("x",), "gelu",
         kwargs={"form": "tanh"}),
    Case("gelu exact |x| >= 20", "gelu", {"x": scaled((4, 10), 20, 60)}, ("x",), "gelu",
         kwargs={"form": "exact"}),
    Case("gelu tanh mid-tail 3<|x|<12", "gelu", {"x": scaled((6, 10), 3, 12)}, ("x",), "gelu",
         kwargs={"form": "tanh"}),
    Case("gelu exact mid-tail 3<|x|<12", "gelu", {"x": scaled((6, 10), 3, 12)}, ("x",), "gelu",
         kwargs={"form": "exact"}),
    # softmax
    Case("softmax last axis", "softmax", {"x": (3, 4, 6)}, ("x",), "softmax"),
    Case("softmax axis 0", "softmax", {"x": (5, 3)}, ("x",), "softmax", kwargs={"axis": 0}),
    Case("softmax |x| >= 20", "softmax", {"x": clustered((4, 6), 30.0, 2.0)}, ("x",), "softmax"),
    Case("softmax near-ties at 1000", "softmax",
         {"x": lambda rng: 1000.0 + rng.standard_normal((3, 5))}, ("x",), "softmax"),
    # cross-entropy
    Case("cross_entropy (B,T,V)", "cross_entropy",
         {"logits": (2, 3, 7), "targets": ints(0, 7, (2, 3))}, ("logits",), "cross_entropy", loss=True),
    Case("cross_entropy ignore_index=-1", "cross_entropy",
         {"logits": (4, 5, 6), "targets": targets_with_ignored((4, 5), 6, -1)}, ("logits",),
         "cross_entropy", loss=True),
    Case("cross_entropy ignore_index=-100, 2-D", "cross_entropy",
         {"logits": (9, 4), "targets": targets_with_ignored((9,), 4, -100)}, ("logits",),
         "cross_entropy", kwargs={"ignore_index": -100}, loss=True),
    Case("cross_entropy large logits", "cross_entropy",
         {"logits": scaled((3, 8), 20, 500), "targets": ints(0, 8, (3,))}, ("logits",),
         "cross_entropy", loss=True),
    Case("cross_entropy batch 1 T=1", "cross_entropy",
         {"logits": (1, 1, 5), "targets": np.array([[3]])}, ("logits",), "cross_entropy", loss=True),
    # dropout (torch's RNG cannot reproduce our mask: finite differences here, torch in test_dropout.py)
    Case("dropout p=0.3", "dropout", {"x": (4, 6)}, ("x",), None, kwargs={"p": 0.3}, seed=11),
    Case("dropout p=0", "dropout", {"x": (4, 6)}, ("x",), "identity", kwargs={"p": 0.0}, seed=11),
    Case("dropout eval", "dropout", {"x": (2, 3, 4)}, ("x",), "identity",
         kwargs={"p": 0.5, "training": False}, seed=11),
    # residual
    Case("residual", "residual", {"x": (2, 3, 4), "fx": (2, 3, 4)}, ("x", "fx"), "residual"),
]

# Block and chunk sizes for the fast ops, from the defaults down to sizes that split the
# table's small shapes into many blocks (along batch items, and along heads of one item) and
# causal chunks (including chunks of Tq > Tk rows that see no key at all).
FAST_SIZES: dict[str, list[dict[str, Any]]] = {
    "attention": [{}, {"block": 7}, {"qrows": 2}, {"qrows": 2, "block": 7}, {"qrows": 1},
                  {"keep_probs": False}, {"keep_probs": False, "qrows": 2, "block": 7},
                  {"keep_probs": False, "qrows": 1}],
    "mha": [{}, {"block": 7, "qrows": 2}, {"keep_probs": False}, {"keep_probs": False, "qrows": 1}],
    "gelu": [{}, {"chunk": 5}],
    "layernorm": [{}],           # no sizes: the compiled kernels (numba) against the NumPy reference
    "rmsnorm": [{}],             # no sizes: the compiled kernels (numba) against the NumPy reference
    "swiglu": [{}],              # no sizes: the compiled kernels (numba) against the NumPy reference
    "rope": [{}],                # no sizes: the kept tables and in-place halves against the reference
    "linear": [{}],              # no sizes: MKL's gemm (where installed) against NumPy's matmul; products
                                 # under dispatch.MIN_WORK stay NumPy's, so tests/ops lower it for these shapes
    "cross_entropy": [{}],       # no sizes: the same operations in place
}


def fast_rows():
    """(case, sizes) for every row whose op has a fast version, at every size of FAST_SIZES."""
    return [(case, sizes) for case in CASES for sizes in FAST_SIZES.get(case.op, [])]


# ---- quantized weights (numformer.ops.quant) -------------------------------------------------
# Quantization has no gradient: its rows are checked by harness.quant_checks against an exact
# computation in rational arithmetic (Python's fractions, no NumPy), against the worst-case bound
# of ops/quant.py's docstring and, for bf16, against PyTorch's own conversion; where `products`
# gives row counts, also the linear map with the quantized weight, y = x deq(W)ᵀ + b and its dx,
# on both op sets (the fast one runs the compiled kernels or the dequantized tiles) against
# float64.

@dataclass(frozen=True)
class QuantCase:
    id: str
    format: str                              # "int8" or "bf16"
    weight: Any                              # shape (standard normal), callable(rng), or float32 bits (uint32 array)
    products: tuple = ()                     # rows M of x for the linear map's checks
    torch: bool = True                       # bf16: compare with torch's conversion (no NaN there: see below)

    def __str__(self):
        return self.id


def from_bits(*bits):
    """float32 values given by their bit patterns, as a (1, n) weight."""
    return np.array(bits, dtype=np.uint32).view(np.float32).reshape(1, -1)


def log_uniform(shape, lo, hi):
    """Magnitudes spread evenly over the decades [lo, hi), random signs."""
    return lambda rng: (np.exp(rng.uniform(np.log(lo), np.log(hi), size=shape))
                        * rng.choice([-1.0, 1.0], size=shape))


def halves(shape, scale):
    """Values (k + ½)·scale, exactly half-way between two multiples of the scale, with a block
    maximum of 127·scale, so that int8's d is exactly `scale` and every other value is a tie."""
    def build(rng):
        k = rng.integers(-127, 127, size=shape) + 0.5
        k[..., ::32] = 127.0
        return k * scale
    return build


QUANT_CASES = [
    QuantCase("int8 (4, 64)", "int8", (4, 64)),
    QuantCase("int8 C_in 70: a short last block", "int8", (3, 70)),
    QuantCase("int8 C_in 7 < 32", "int8", (5, 7)),
    QuantCase("int8 ties at ½ round away from zero", "int8", halves((3, 64), 0.125)),
    QuantCase("int8 values over 1e-20 .. 1e20", "int8", log_uniform((4, 96), 1e-20, 1e20)),
    QuantCase("int8 a block of zeros, a lone value", "int8",
              np.array([[0.0] * 32 + [0.0] * 31 + [-3.0] + [2.0 ** -k for k in range(32)]])),
    QuantCase("bf16 (4, 40)", "bf16", (4, 40)),
    QuantCase("bf16 values over 1e-38 .. 1e38", "bf16", log_uniform((6, 50), 1e-38, 1e38)),
    QuantCase("bf16 ties to even, subnormals", "bf16",
              from_bits(0x3F808000, 0x3F818000, 0xBF808000, 0x3F807FFF, 0x3F808001, 0x00008000, 0x00018000,
                        0x00017FFF, 0x80018000, 0x00000001)),
    QuantCase("bf16 ±0, ±inf, overflow to inf", "bf16",
              from_bits(0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x7F7F7FFF, 0x7F7F8000,
                        0xFF7F8000)),
    QuantCase("bf16 NaN stays NaN", "bf16", from_bits(0x7FC00000, 0xFFC00001, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF),
              torch=False),    # PyTorch makes every NaN 0xFFFF; ours keeps the sign (ops/quant.py)
    # the linear map with quantized weights: row kernels (≤ ops.fast.quantized.ROWS rows), tiles beyond,
    # groups of 8 output rows with a remainder, a short last block
    QuantCase("int8 linear (13, 70)", "int8", (13, 70), products=(1, 3, 17)),
    QuantCase("int8 linear (40, 96)", "int8", (40, 96), products=(1, 9, 20)),
    QuantCase("bf16 linear (13, 70)", "bf16", (13, 70), products=(1, 3, 17)),
    QuantCase("bf16 linear (40, 96)", "bf16", (40, 96), products=(1, 9, 20)),
]
