"""`numformer explain`'s numbers, against expectations computed here from the formulas alone.

Every expected value below is written out with `math` (exp, erf, tanh, log, sqrt) or plain loops,
never taken from numformer: if an op, the optimizer or the explain code goes wrong, these fail.
The verdicts (agree / differ / article incomplete) are checked one by one too, including the
intermediate steps where the article goes wrong.
"""

import math

import numpy as np
import pytest

import numformer.ops.attention
import numformer.ops.cross_entropy
import numformer.ops.dropout
import numformer.ops.gelu
import numformer.ops.layernorm
import numformer.ops.linear
import numformer.ops.positional
import numformer.ops.residual
import numformer.ops.rmsnorm
import numformer.ops.rope
import numformer.ops.softmax
import numformer.ops.swiglu
import numformer.optim
from numformer.explain import ALL_NAMES, LATER, NAMES
from numformer.explain.examples import EXAMPLES, LATER_EXAMPLES, Step, approx, exact, explain

# The verdict for each formula: True agrees, False differs, None the article stops before the result.
EXPECTED_VERDICT = {
    "linear": True,
    "positional_encoding": None,
    "attention": False,
    "multi_head_attention": None,
    "residual": True,
    "layernorm": True,
    "gelu": True,
    "softmax": True,
    "cross_entropy": True,
    "dropout": False,
    "backpropagation": None,
    "gradient_descent": True,
    "adam": False,
}

V = [[1.0, 2.0], [3.0, 4.0]]


@pytest.fixture(scope="module")
def ex():
    return {e.name: e for e in explain()}


def close(actual, expected, tol=1e-12):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float),
                               rtol=tol, atol=tol)


def softmax_list(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [x / sum(e) for x in e]


def matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))]
            for i in range(len(a))]


def attention_by_hand(q, k, v):
    """softmax(q kᵀ / √d) v with lists and math.exp."""
    d = len(q[0])
    scores = [[sum(qi[c] * kj[c] for c in range(d)) / math.sqrt(d) for kj in k] for qi in q]
    weights = [softmax_list(row) for row in scores]
    return weights, matmul(weights, v)


# -- the verdicts --------------------------------------------------------------------------------


def test_all_thirteen_in_the_articles_order_then_the_later_four(ex):
    assert NAMES == tuple(EXPECTED_VERDICT) == tuple(EXAMPLES)
    assert LATER == tuple(LATER_EXAMPLES) == ("rope", "rmsnorm", "swiglu", "grouped_query_attention")
    assert [e.name for e in explain()] == list(ALL_NAMES)
    assert [e.number for e in explain()] == list(range(1, 18))
    assert [e.in_article for e in explain()] == [True] * 13 + [False] * 4


@pytest.mark.parametrize("name", LATER)
def test_later_formulas_print_nothing_and_say_so(ex, name):
    e = ex[name]
    assert e.agrees is None and e.diff is None and all(s.printed is None for s in e.steps)
    assert len(e.results) == 1 and e.note.startswith("Not in the article: ")


@pytest.mark.parametrize("name", NAMES)
def test_verdict(ex, name):
    e = ex[name]
    assert e.agrees is EXPECTED_VERDICT[name]
    if e.agrees is None:
        assert any(s.printed is None for s in e.results)
        assert e.diff is None
    else:
        assert all(s.printed is not None for s in e.results)
        assert (e.diff > 0.01) == (e.agrees is False)


def test_printed_precision_rules():
    # "=" claims are exact: 2.3395 is not 2 even though it rounds to it.
    assert Step("a", "a", 2.3395, exact(2)).agrees is False
    assert Step("a", "a", 3 - 0.1 * 6, exact(2.4)).agrees is True  # float rounding is not a miss
    # "≈ 0.357" means rounded to 3 decimals: ±0.0005.
    assert Step("a", "a", -math.log(0.7), approx(0.357, 3)).agrees is True
    assert Step("a", "a", 0.3564, approx(0.357, 3)).agrees is False
    assert Step("a", "a", 0.33, approx(0.5, 1)).agrees is False
    assert Step("a", "a", 0.46, approx(0.5, 1)).agrees is True
    assert Step("a", "a", 1.0, None).agrees is None
    step = Step("a", "a", [0.3302, 0.6698], approx([0.5, 0.5], 1))
    assert step.diff == pytest.approx(0.1698)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        Step("a", "a", [1.0, 2.0], exact([1, 2, 3]))


# -- one test per formula ------------------------------------------------------------------------


def test_linear(ex):
    e = ex["linear"]
    W, x, b = [[1, 0, 1], [0, 1, 0]], [1, 2, 3], [0.5, -0.5]
    wx = [sum(W[o][i] * x[i] for i in range(3)) for o in range(2)]
    close(e.step("Wx").computed, wx)
    close(e.step("y").computed, [wx[o] + b[o] for o in range(2)])
    assert e.step("Wx").agrees and e.step("y").agrees


def test_positional_encoding(ex):
    e = ex["positional_encoding"]
    pe = [math.sin(1), math.cos(1), math.sin(1 / 10000 ** (2 / 4)), math.cos(1 / 10000 ** (2 / 4))]
    close(e.step("PE").computed, pe)
    close(e.step("angle").computed, [1.0, 0.01])
    assert e.step("angle").agrees is True
    assert e.step("PE").printed is None


def test_attention(ex):
    e = ex["attention"]
    Q, K = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]
    weights, out = attention_by_hand(Q, K, V)
    s = 1 / math.sqrt(2)
    close(weights[0], [1 / (1 + math.exp(s)), math.exp(s) / (1 + math.exp(s))])
    close(e.step("QK^T").computed, [[0, 1], [1, 0]])
    close(e.step("QK^T/sqrt(d_k)").computed, [[0, s], [s, 0]])
    close(e.step("weights").computed, weights)
    close(e.step("output").computed, out)
    # Where the article goes wrong: QKᵀ and its scaling are right, the softmax rounding is not.
    assert e.step("QK^T").agrees and e.step("QK^T/sqrt(d_k)").agrees
    assert e.step("weights").agrees is False
    assert e.step("weights").diff == pytest.approx(0.5 - weights[0][0], abs=1e-12)
    assert e.step("output").agrees is False
    assert e.diff == pytest.approx(max(abs(out[0][0] - 2), abs(out[1][0] - 2)), abs=1e-12)
    # The note explains the article's [[2, 3], [2, 3]] as what weights of exactly 0.5 give: true,
    # and said.
    assert matmul([[0.5, 0.5], [0.5, 0.5]], V) == [[2, 3], [2, 3]]
    assert "[[2, 3], [2, 3]]" in e.note and "exactly 0.5" in e.note


def test_multi_head_attention(ex):
    e = ex["multi_head_attention"]
    I2, P = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]
    Q, K = I2, P
    # head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V); W_1 = I, W_2 = P for q, k and v alike.
    inputs_1 = [matmul(Q, I2), matmul(K, I2), matmul(V, I2)]
    inputs_2 = [matmul(Q, P), matmul(K, P), matmul(V, P)]
    close(e.step("head_2_inputs").printed.value, [[[0, 1], [1, 0]], [[1, 0], [0, 1]], [[2, 1], [4, 3]]])  # the article's
    head_1 = attention_by_hand(*inputs_1)[1]
    head_2 = attention_by_hand(*inputs_2)[1]
    concat = [head_1[t] + head_2[t] for t in range(2)]  # (T, 2 hs)
    close(e.step("head_1_inputs").computed, inputs_1)
    close(e.step("head_2_inputs").computed, inputs_2)
    close(e.step("head_1").computed, head_1)
    close(e.step("head_2").computed, head_2)
    close(e.step("concat").computed, concat)
    close(e.step("output").computed, concat)  # W_O is the identity
    close(e.inputs["W_O"], np.eye(4))
    assert "W_O" in e.ours
    close(e.extra["mha_output"], concat)  # the fused numformer.ops.mha gives the same
    assert e.step("head_1_inputs").agrees and e.step("head_2_inputs").agrees
    assert e.step("output").printed is None
    # The note's claim: head_2 is head_1 with its columns swapped.
    close(head_2, [row[::-1] for row in head_1])
    assert "columns swapped" in e.note


def test_residual(ex):
    close(ex["residual"].step("y").computed, [1 + 0.5, 2 - 0.5])


def test_layernorm(ex):
    e = ex["layernorm"]
    x = [1.0, 2.0, 3.0]
    mu = sum(x) / 3
    var = sum((v - mu) ** 2 for v in x) / 3  # biased
    for key, eps in (("y_eps_1e-5", 1e-5), ("y_eps_0", 0.0)):
        close(e.step(key).computed, [(v - mu) / math.sqrt(var + eps) for v in x])
        assert e.step(key).agrees
    assert var == pytest.approx(2 / 3)
    # The note's claim about the unbiased variance: σ = 1, giving [-1, 0, 1].
    assert sum((v - mu) ** 2 for v in x) / 2 == 1.0
    assert "σ = 1 and [-1, 0, 1]" in e.note


def test_gelu(ex):
    e = ex["gelu"]
    tanh_form = 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    exact_form = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # 1 · Φ(1)
    close(e.step("tanh").computed, tanh_form)
    close(e.step("exact").computed, exact_form)
    assert e.step("tanh").agrees and e.step("exact").agrees


def test_softmax(ex):
    close(ex["softmax"].step("softmax").computed, softmax_list([1, 2, 3]))


def test_cross_entropy(ex):
    e = ex["cross_entropy"]
    close(e.step("loss").computed, -math.log(0.7))
    assert e.step("loss").agrees


def test_dropout(ex):
    e = ex["dropout"]
    x, m, p = [1, 2, 3], [1, 0, 1], 0.5
    close(e.step("y").computed, [xi * mi / (1 - p) for xi, mi in zip(x, m)])  # [2, 0, 6]
    close(e.step("y_eval").computed, x)
    assert e.step("y").agrees is False
    assert e.diff == pytest.approx(6 - 3)
    # The rng seed the example names really draws the seed's mask.
    y, _ = numformer.ops.dropout.forward(np.array(x, float), p,
                                         np.random.default_rng(e.extra["rng_seed"]))
    assert list(y != 0) == [True, False, True]


def test_backpropagation(ex):
    e = ex["backpropagation"]
    W, x, t = [[1, 0, 1], [0, 1, 0]], [1, 2, 3], [3, 3]
    y = [sum(W[o][i] * x[i] for i in range(3)) for o in range(2)]
    dy = [y[o] - t[o] for o in range(2)]
    close(e.step("y").computed, y)
    close(e.step("L").computed, 0.5 * sum(d * d for d in dy))
    close(e.step("dL/dy").computed, dy)
    close(e.step("dL/dW").computed, [[dy[o] * x[i] for i in range(3)] for o in range(2)])
    close(e.step("dL/dx").computed, [sum(W[o][i] * dy[o] for o in range(2)) for i in range(3)])
    close(e.step("dL/dW_finite_diff").computed, e.step("dL/dW").computed, tol=1e-7)
    assert e.extra["fd_gap"] < 1e-7
    assert list(e.inputs["t"]) == t and "t" in e.ours


def test_gradient_descent(ex):
    e = ex["gradient_descent"]
    theta, lr = 3.0, 0.1
    close(e.step("grad").computed, 2 * theta)
    close(e.step("theta_1").computed, theta - lr * 2 * theta)
    path = [theta]
    for _ in range(5):
        path.append(path[-1] - lr * 2 * path[-1])
    close(e.step("theta_0..5").computed, path)
    assert e.step("grad").agrees and e.step("theta_1").agrees


def test_adam(ex):
    e = ex["adam"]
    g, b1, b2, lr, eps = [0.1, -0.2], 0.9, 0.999, 0.001, 1e-8
    m = [(1 - b1) * gi for gi in g]
    v = [(1 - b2) * gi * gi for gi in g]
    m_hat = [mi / (1 - b1) for mi in m]
    v_hat = [vi / (1 - b2) for vi in v]
    step = [lr * mh / (math.sqrt(vh) + eps) for mh, vh in zip(m_hat, v_hat)]
    close(e.step("m_1").computed, m)
    close(e.step("v_1").computed, v)
    close(e.step("m_hat_1").computed, m_hat)
    close(e.step("v_hat_1").computed, v_hat)
    close(e.step("step").computed, step, tol=1e-12)
    close(e.extra["theta_1"], [0 - s for s in step])
    close(e.extra["formula_step"], step)
    # Where the article goes wrong: m_1 is right; v_1, both bias corrections and the step are not.
    assert e.step("m_1").agrees is True
    assert e.step("v_1").agrees is False  # the article 0.0001, true 0.001 · 0.01 = 0.00001
    assert e.step("m_hat_1").agrees is False
    assert e.step("v_hat_1").agrees is False
    assert e.step("step").agrees is False
    assert e.diff == pytest.approx(0.1 - step[0], abs=1e-12)
    close(m_hat, g)  # the note's claim: at t = 1, m̂ = g and v̂ = g²
    close(v_hat, [gi * gi for gi in g])
    assert "m̂₁ = g and v̂₁ = g²" in e.note


# -- the later formulas, not in the article -------------------------------------------------------


def rotate_by_hand(x, p, theta):
    """RoPE with math.cos and math.sin: pair (x_i, x_{i+h}) turned by p·θ^(−2i/hs)."""
    h = len(x) // 2
    out = [0.0] * len(x)
    for i in range(h):
        a = p * theta ** (-2 * i / len(x))
        out[i] = x[i] * math.cos(a) - x[i + h] * math.sin(a)
        out[i + h] = x[i + h] * math.cos(a) + x[i] * math.sin(a)
    return out


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def test_rope(ex):
    e = ex["rope"]
    q, k = [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]
    close(e.step("angles_at_1").computed, [1.0, 0.01])
    close(e.step("q_at_1").computed, rotate_by_hand(q, 1, 1e4))
    norm = math.sqrt(dot(q, q))
    close(e.step("norms").computed, [norm, norm, norm])
    want = [dot(rotate_by_hand(q, m, 1e4), rotate_by_hand(k, m + 2, 1e4)) for m in (0, 3, 10)]
    close(e.step("scores_distance_2").computed, want)
    close(want, [want[0]] * 3)                               # the property: distance only
    close(e.extra["relative"], dot(q, rotate_by_hand(k, 2, 1e4)))
    close(e.step("score_distance_minus_2").computed, dot(rotate_by_hand(q, 2, 1e4), k))
    assert abs(e.step("score_distance_minus_2").computed - want[0]) > 1


def test_rmsnorm(ex):
    e = ex["rmsnorm"]

    def rms_by_hand(x, eps=1e-5):
        r = math.sqrt(sum(v * v for v in x) / len(x) + eps)
        return [v / r for v in x]

    def ln_by_hand(x, eps=1e-5):
        mu = sum(x) / len(x)
        var = sum((v - mu) ** 2 for v in x) / len(x)
        return [(v - mu) / math.sqrt(var + eps) for v in x]

    close(e.step("rms").computed, math.sqrt(14 / 3 + 1e-5))
    close(e.step("y").computed, rms_by_hand([1, 2, 3]))
    close(e.step("layernorm").computed, ln_by_hand([1, 2, 3]))
    close(e.step("y_shifted").computed, rms_by_hand([11, 12, 13]))
    close(e.step("layernorm_shifted").computed, ln_by_hand([11, 12, 13]))
    close(e.step("y_scaled").computed, rms_by_hand([3, 6, 9]))


def test_swiglu(ex):
    e = ex["swiglu"]

    def silu(g):
        return g / (1 + math.exp(-g))

    g, u = [1.0, 2.0, -1.0], [3.0, 2.0, 1.0]                 # W_gate x, W_up x, by hand
    h = [silu(a) * b for a, b in zip(g, u)]
    close(e.step("gate").computed, g)
    close(e.step("up").computed, u)
    close(e.step("silu").computed, [silu(a) for a in g])
    # SiLU's slope from central differences, not from its formula
    close(e.step("silu_slope").computed, [(silu(a + 1e-6) - silu(a - 1e-6)) / 2e-6 for a in g], tol=1e-8)
    close(e.step("h").computed, h)
    close(e.step("y").computed, [h[0] + h[2], h[1] - h[2]])   # W_down = [[1, 0, 1], [0, 1, -1]]


def test_grouped_query_attention(ex):
    e = ex["grouped_query_attention"]
    Q, K, Vm = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]

    def swap(m):
        return [[r[1], r[0]] for r in m]

    queries = [Q, swap(Q), [[2 * x for x in r] for r in Q], Q]
    keys, values = [K, swap(K)], [Vm, swap(Vm)]

    def out(keys):
        return [attention_by_hand(queries[h], keys[h // 2], values[h // 2])[1] for h in range(4)]

    heads = out(keys)
    close(e.step("head_1").computed, heads[0])
    close(e.step("head_3").computed, heads[2])
    close(e.step("output").computed, [sum((heads[h][t] for h in range(4)), []) for t in range(2)])
    close(e.extra["output_repeated"], e.step("output").computed)
    close(e.step("cache_per_position").computed, [16, 8])
    # dK of L = Σ y by central differences through the hand-written attention
    want = [[0.0] * 4 for _ in range(2)]
    for t in range(2):
        for c in range(4):
            j, d = c // 2, c % 2
            plus = [[row[:] for row in m] for m in keys]
            minus = [[row[:] for row in m] for m in keys]
            plus[j][t][d] += 1e-6
            minus[j][t][d] -= 1e-6
            total = lambda ks: sum(x for head in out(ks) for row in head for x in row)  # noqa: E731
            want[t][c] = (total(plus) - total(minus)) / 2e-6
    close(e.step("dK").computed, want, tol=1e-7)
    close(e.extra["dk_summed"], want, tol=1e-7)


# -- the examples really call the ops ------------------------------------------------------------

PATCHES = [
    ("linear", numformer.ops.linear, "forward"),
    ("positional_encoding", numformer.ops.positional, "sinusoidal"),
    ("attention", numformer.ops.attention, "forward"),
    ("multi_head_attention", numformer.ops.attention, "forward"),
    ("residual", numformer.ops.residual, "forward"),
    ("layernorm", numformer.ops.layernorm, "forward"),
    ("gelu", numformer.ops.gelu, "forward"),
    ("softmax", numformer.ops.softmax, "forward"),
    ("cross_entropy", numformer.ops.cross_entropy, "forward"),
    ("dropout", numformer.ops.dropout, "forward"),
    ("backpropagation", numformer.ops.linear, "backward"),
    ("rope", numformer.ops.rope, "forward"),
    ("rmsnorm", numformer.ops.rmsnorm, "forward"),
    ("swiglu", numformer.ops.swiglu, "forward"),
    ("grouped_query_attention", numformer.ops.attention, "forward"),
]


@pytest.mark.parametrize("name, module, func", PATCHES, ids=[p[0] for p in PATCHES])
def test_result_comes_from_the_op(ex, monkeypatch, name, module, func):
    """Scale the op's output by 1.5: the example's result must move with it."""
    original = getattr(module, func)

    def scaled(*args, **kwargs):
        out = original(*args, **kwargs)
        if isinstance(out, tuple) and func == "backward":
            return tuple(None if o is None else 1.5 * o for o in out)
        if isinstance(out, tuple):
            return (1.5 * out[0],) + out[1:]
        return 1.5 * out

    monkeypatch.setattr(module, func, scaled)
    patched = (EXAMPLES.get(name) or LATER_EXAMPLES[name])()
    before, after = ex[name].results[0].computed, patched.results[0].computed
    assert not np.allclose(before, after)


@pytest.mark.parametrize("name, cls", [("gradient_descent", "SGD"), ("adam", "Adam")])
def test_result_comes_from_the_optimizer(ex, monkeypatch, name, cls):
    """An optimizer fed zero gradients must leave θ where it was: the result moves with it."""
    base = getattr(numformer.optim, cls)

    class ZeroGrad(base):
        def step(self, grads, lr=None):
            super().step(np.zeros_like(grads), lr)

    monkeypatch.setattr(numformer.optim, cls, ZeroGrad)
    patched = EXAMPLES[name]()
    assert not np.allclose(ex[name].results[0].computed, patched.results[0].computed)
