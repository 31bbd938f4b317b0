"""The article's thirteen worked examples, re-done by calling numformer.ops and numformer.optim;
then the later formulas' (not in the article), computed the same way.

Each function below takes one worked example's inputs exactly as the article gives them, computes
every quantity with numformer's own ops and optimizers, and sets each number the article prints
beside the computed one. The printed numbers are transcribed data (`exact(...)`, `approx(...)`),
never used as results. A verdict compares the two at the precision the article prints:

- the article writes "= [4.5, 1.5]": an exact claim; it agrees when equal up to float64 rounding;
- the article writes "≈ 0.357": a value rounded to 3 decimals; it agrees when |computed − 0.357| is
  at most half a unit in the last printed decimal, 0.0005.

An example whose result the article never prints (it stops half-way, or gives only a formula) has
agrees = None, and its computed result is the answer the article leaves out.

After the article's thirteen come the formulas today's large models (Llama, Mistral, Qwen2) add,
which the article does not have: RoPE, RMSNorm, SwiGLU and grouped-query attention (LATER_EXAMPLES,
numbered 14 to 17, in_article False). They print nothing to check, so agrees is None; each
example instead shows, with small numbers and numformer's own ops, the property that makes the
formula worth having (a rotation keeps lengths and makes q·k depend on distance only; RMSNorm
against LayerNorm on the same vector; ...), with a cross-check computed another way beside it.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from numformer import optim        # optim.SGD, optim.Adam
from numformer.explain import ALL_NAMES, LATER, NAMES
from numformer.ops import (attention, cross_entropy, dropout, gelu, layernorm, linear, mha, positional, residual,
                           rmsnorm, rope, softmax, swiglu)

# Slack for "=" claims: float64 rounding of the ops, nothing more.
_EXACT_RTOL = 1e-9
_EXACT_ATOL = 1e-12


# ---------------------------------------------------------------------------------------------
# The pieces: a printed number, one step of a worked example, a whole example
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Printed:
    """A number or array as the article prints it.

    decimals is None when the article writes "=" (an exact value), or the number of decimals it
    rounds to when it writes "≈".
    """

    value: np.ndarray
    decimals: int | None = None

    @property
    def exact(self) -> bool:
        return self.decimals is None

    def tolerance(self) -> float:
        """Largest |computed − printed| that still agrees with what the article wrote."""
        if self.exact:
            return _EXACT_ATOL + _EXACT_RTOL * float(np.max(np.abs(self.value), initial=0.0))
        return 0.5 * 10.0 ** (-self.decimals) + _EXACT_ATOL


def exact(value) -> Printed:
    """The article writes `= value`."""
    return Printed(np.asarray(value, dtype=np.float64))


def approx(value, decimals: int) -> Printed:
    """The article writes `≈ value`, rounded to `decimals` decimals."""
    return Printed(np.asarray(value, dtype=np.float64), decimals)


@dataclass
class Step:
    """One quantity of a worked example: its computed value and what the article prints for it."""

    key: str  # name in the JSON output
    label: str  # name on the terminal
    computed: np.ndarray
    printed: Printed | None = None  # None: the article prints no number for it
    decimals: int = 4  # decimals shown for the computed value
    result: bool = False  # the example's result: it decides the verdict

    def __post_init__(self):
        self.computed = np.asarray(self.computed, dtype=np.float64)
        if self.printed is not None and self.printed.value.shape != self.computed.shape:
            raise ValueError(
                f"{self.key}: the article's value has shape {self.printed.value.shape}, "
                f"computed has shape {self.computed.shape}"
            )

    @property
    def diff(self) -> float | None:
        """max |computed − printed|, or None if the article prints nothing here."""
        if self.printed is None:
            return None
        return float(np.max(np.abs(self.computed - self.printed.value), initial=0.0))

    @property
    def agrees(self) -> bool | None:
        if self.printed is None:
            return None
        return self.diff <= self.printed.tolerance()


@dataclass
class Example:
    """One of the article's formulas with its worked example, computed."""

    number: int  # section number in the article
    name: str
    title_zh: str  # the article's own section title, to find it in the document
    formula: str
    inputs: dict[str, Any]
    steps: list[Step]
    note: str
    ours: tuple[str, ...] = ()  # inputs the article does not give, chosen here (said in the note)
    extra: dict[str, Any] = field(default_factory=dict)  # by-products the tests cross-check
    in_article: bool = True  # False: a later formula, after the article's thirteen

    @property
    def results(self) -> list[Step]:
        return [s for s in self.steps if s.result]

    @property
    def agrees(self) -> bool | None:
        """True/False when the article prints its result, None when it stops before it."""
        verdicts = [s.agrees for s in self.results]
        if not verdicts or any(v is None for v in verdicts):
            return None
        return all(verdicts)

    @property
    def diff(self) -> float | None:
        """Largest |computed − printed| over the result, or None if the article prints none."""
        diffs = [s.diff for s in self.results]
        if not diffs or any(d is None for d in diffs):
            return None
        return max(diffs)

    def step(self, key: str) -> Step:
        for s in self.steps:
            if s.key == key:
                return s
        raise KeyError(key)

    def to_json(self) -> dict:
        """The JSON object: name, formula, inputs, computed, article_printed, agrees, note, and
        seed_printed, the same as article_printed under the key's first name (kept: it is public)."""
        printed = {s.key: _plain(s.printed.value) for s in self.steps if s.printed is not None}
        return {
            "name": self.name,
            "formula": self.formula,
            "inputs": {k: _plain(v) for k, v in self.inputs.items()},
            "computed": {s.key: _plain(s.computed) for s in self.steps},
            "seed_printed": printed or None,
            "article_printed": printed or None,
            "agrees": self.agrees,
            "note": self.note,
        }


def _plain(value):
    """ndarray / NumPy scalar -> float or nested lists of floats; ints and strings unchanged."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"non-finite value {arr!r} cannot go into JSON")
    return arr.tolist()


def _f(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def fmt(value, decimals: int = 4) -> str:
    """A value in one line for a note: 0.3302, [0.3302, 0.6698], [[2.3395, 3.3395], [...]]."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return f"{float(arr):.{decimals}f}"
    return "[" + ", ".join(fmt(a, decimals) for a in arr) + "]"


def times(big, small) -> str:
    """How many times larger `big` is than `small`, at most: '10', '100' (or 'inf')."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return num(np.nanmax(np.abs(np.asarray(big) / np.asarray(small))))


def num(x: float) -> str:
    """A number to 4 significant digits, trailing zeros dropped: 2.4, 0.001, 100, 0.3395."""
    return np.format_float_positional(float(x), precision=4, unique=False, fractional=False,
                                      trim="-")


# ---------------------------------------------------------------------------------------------
# 1. Linear map
# ---------------------------------------------------------------------------------------------


def linear_example() -> Example:
    W = _f([[1, 0, 1], [0, 1, 0]])  # (d_out, d_in): the article's W is already PyTorch's (out, in)
    x = _f([1, 2, 3])
    b = _f([0.5, -0.5])
    wx, _ = linear.forward(x, W)
    y, _ = linear.forward(x, W, b)
    return Example(
        1, "linear", "线性变换",
        formula="y = W x + b",
        inputs={"W": W, "x": x, "b": b},
        steps=[
            Step("Wx", "W x", wx, exact([4, 2]), 4),
            Step("y", "y = W x + b", y, exact([4.5, 1.5]), 4, result=True),
        ],
        note=(
            f"numformer.ops.linear.forward(x, W, b) computes x Wᵀ + b with W in PyTorch's "
            f"(out, in) layout, which for one vector x is the article's W x + b: W x = {fmt(wx, 1)}, "
            f"y = {fmt(y, 1)}."
        ),
    )


# ---------------------------------------------------------------------------------------------
# 2. Sinusoidal positional encoding
# ---------------------------------------------------------------------------------------------


def positional_encoding_example() -> Example:
    pos, d = 1, 4
    table = positional.sinusoidal(pos + 1, d)  # (T, C): rows are positions 0..pos
    pe = np.asarray(table[pos], dtype=np.float64)  # (d,)
    # The angle pos / 10000^(2i/d) the op used, read back from its own (sin, cos) pair.
    angle = np.arctan2(pe[0::2], pe[1::2])  # (d/2,)
    angle_step = Step("angle", "angle pos/10000^(2i/d)", angle, exact([1, 1 / 100]), 4)
    read_back = "are" if angle_step.agrees else "are NOT"
    return Example(
        2, "positional_encoding", "位置编码",
        formula="PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d))",
        inputs={"pos": pos, "d": d},
        steps=[
            angle_step,
            Step("PE", "PE(1, 0..3)", pe, None, 6, result=True),
        ],
        note=(
            f"The article stops at sin(1), cos(1), sin(1/100), cos(1/100) without numbers. Row "
            f"pos = 1 of numformer.ops.positional.sinusoidal(2, 4) gives PE(1, 0..3) = "
            f"{fmt(pe, 8)}. The angles read back from the op's sin/cos pairs (atan2) "
            f"{read_back} the article's 1 and 1/100."
        ),
    )


# ---------------------------------------------------------------------------------------------
# 3. Scaled dot-product attention
# ---------------------------------------------------------------------------------------------

_Q = [[1, 0], [0, 1]]
_K = [[0, 1], [1, 0]]
_V = [[1, 2], [3, 4]]


def attention_example() -> Example:
    Q, K, V = _f(_Q), _f(_K), _f(_V)  # (n, d_k), (m, d_k), (m, d_v)
    d_k = Q.shape[-1]
    scores, _ = linear.forward(Q, K)  # Q Kᵀ: a linear map whose weight rows are the keys (n, m)
    scaled = scores / math.sqrt(d_k)
    weights, _ = softmax.forward(scaled, axis=-1)  # (n, m)
    out, _ = attention.forward(Q, K, V)  # (n, d_v)
    return Example(
        3, "attention", "注意力机制",
        formula="Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V",
        inputs={"Q": Q, "K": K, "V": V, "d_k": d_k},
        steps=[
            Step("QK^T", "Q Kᵀ", scores, exact([[0, 1], [1, 0]]), 4),
            Step("QK^T/sqrt(d_k)", "Q Kᵀ / √d_k", scaled, approx([[0, 0.707], [0.707, 0]], 3), 4),
            Step("weights", "softmax(Q Kᵀ / √d_k)", weights,
                 approx([[0.5, 0.5], [0.5, 0.5]], 1), 4),
            Step("output", "Attention(Q, K, V)", out, exact([[2, 3], [2, 3]]), 4, result=True),
        ],
        note=(
            f"The article rounds softmax([0, {scaled[0, 1]:.3f}]) to [0.5, 0.5]; it is "
            f"{fmt(weights[0])}: a score gap of {scaled[0, 1]:.3f} makes one weight "
            f"e^{scaled[0, 1]:.3f} = {weights[0, 1] / weights[0, 0]:.3f} times the other. With "
            f"the true "
            f"weights (numformer.ops.attention.forward) the output is {fmt(out)}, not "
            f"[[2, 3], [2, 3]]: that matrix is the plain average of V's rows, what weights of "
            f"exactly 0.5 would give."
        ),
        extra={"weights": weights},
    )


# ---------------------------------------------------------------------------------------------
# 4. Multi-head attention
# ---------------------------------------------------------------------------------------------


def multi_head_attention_example() -> Example:
    Q, K, V = _f(_Q), _f(_K), _f(_V)  # (T, d)
    I2, P = _f(np.eye(2)), _f([[0, 1], [1, 0]])
    W_Q, W_K, W_V = [I2, P], [I2, P], [I2, P]  # head i's projections W_i^Q, W_i^K, W_i^V (d, hs)
    n_head, hs = len(W_Q), W_Q[0].shape[1]
    T, C = Q.shape[0], n_head * hs
    # The article never gives W_O; the identity adds nothing and shows Concat itself.
    W_O = _f(np.eye(C))

    # Q W_i^Q for every head (the article multiplies on the right; linear's weight is (out, in)).
    q = np.stack([linear.forward(Q, w.T)[0] for w in W_Q])  # (nh, T, hs)
    k = np.stack([linear.forward(K, w.T)[0] for w in W_K])  # (nh, T, hs)
    v = np.stack([linear.forward(V, w.T)[0] for w in W_V])  # (nh, T, hs)
    heads, _ = attention.forward(q, k, v)  # (nh, T, hs): every head in one call
    concat = heads.transpose(1, 0, 2).reshape(T, C)  # (T, nh * hs), head 1's columns first
    out, _ = linear.forward(concat, W_O.T)  # Concat(head_1, head_2) W_O

    # Cross-check with numformer's multi-head op, the step between the projections: the heads'
    # projections side by side (T, nh·hs), split into heads, attention, heads concatenated.
    def side_by_side(per_head):  # (nh, T, hs) -> (B=1, T, nh·hs)
        return per_head.transpose(1, 0, 2).reshape(1, T, C)

    y_heads, _ = mha.forward(side_by_side(q), side_by_side(k), side_by_side(v), n_head, causal=False)
    y_mha, _ = linear.forward(y_heads, W_O.T)  # (1, T, C)
    mha_gap = float(np.max(np.abs(y_mha[0] - out)))

    head_inputs = [np.stack([q[i], k[i], v[i]]) for i in range(n_head)]  # (3, T, hs) each
    swapped = np.allclose(heads[1], heads[0] @ P)
    return Example(
        4, "multi_head_attention", "多头注意力机制",
        formula=("MultiHead(Q, K, V) = Concat(head_1, …, head_h) W_O,  "
                 "head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)"),
        inputs={"h": n_head, "Q": Q, "K": K, "V": V,
                "W_1^Q": W_Q[0], "W_1^K": W_K[0], "W_1^V": W_V[0],
                "W_2^Q": W_Q[1], "W_2^K": W_K[1], "W_2^V": W_V[1], "W_O": W_O},
        ours=("W_O",),
        steps=[
            Step("head_1_inputs", "Q W₁ᵠ, K W₁ᴷ, V W₁ⱽ", head_inputs[0],
                 exact([_Q, _K, _V]), 1),
            Step("head_2_inputs", "Q W₂ᵠ, K W₂ᴷ, V W₂ⱽ", head_inputs[1],
                 exact([[[0, 1], [1, 0]], [[1, 0], [0, 1]], [[2, 1], [4, 3]]]), 1),
            Step("head_1", "head_1", heads[0], None, 4),
            Step("head_2", "head_2", heads[1], None, 4),
            Step("concat", "Concat(head_1, head_2)", concat, None, 4),
            Step("output", "MultiHead = Concat · W_O", out, None, 4, result=True),
        ],
        note=(
            f"The article stops at head_2's inputs and never gives W_O. head_1 = {fmt(heads[0])} "
            f"(the attention example's output); head_2 = {fmt(heads[1])}"
            + (", head_1 with its columns swapped: (Q P)(K P)ᵀ = Q Kᵀ since P Pᵀ = I, and V P "
               "swaps V's columns" if swapped else "")
            + f". W_O: numformer uses the {C}×{C} identity, since any other matrix would be an "
            f"invented number; the result is then Concat(head_1, head_2) itself. The op "
            f"numformer.ops.mha.forward (the step between the projections: the heads' Q W_i^Q, "
            f"K W_i^K and V W_i^V side by side, split into heads, attention, concatenated), then "
            f"W_O, gives the same output to {mha_gap:.1e}."
        ),
        extra={"mha_output": y_mha[0]},
    )


# ---------------------------------------------------------------------------------------------
# 5. Residual connection
# ---------------------------------------------------------------------------------------------


def residual_example() -> Example:
    x = _f([1, 2])
    fx = _f([0.5, -0.5])  # Layer(x), as the article gives it
    y, _ = residual.forward(x, fx)
    return Example(
        5, "residual", "残差连接",
        formula="y = Layer(x) + x",
        inputs={"x": x, "Layer(x)": fx},
        steps=[Step("y", "y = Layer(x) + x", y, exact([1.5, 1.5]), 4, result=True)],
        note=(
            f"numformer.ops.residual.forward(x, Layer(x)) = {fmt(y, 1)}. In the backward pass "
            f"the same dy reaches both x and Layer(x): that fan-in is why residuals ease "
            f"vanishing gradients."
        ),
    )


# ---------------------------------------------------------------------------------------------
# 6. LayerNorm
# ---------------------------------------------------------------------------------------------


def layernorm_example() -> Example:
    x = _f([1, 2, 3])
    gamma, beta = _f([1, 1, 1]), _f([0, 0, 0])
    printed = approx([-1.225, 0, 1.225], 3)
    y, _ = layernorm.forward(x, gamma, beta, eps=1e-5)
    y0, _ = layernorm.forward(x, gamma, beta, eps=0.0)
    s1 = Step("y_eps_1e-5", "y, eps = 1e-5", y, printed, 6, result=True)
    s0 = Step("y_eps_0", "y, eps = 0", y0, printed, 6, result=True)
    gap = float(np.max(np.abs(y - y0)))
    same = "both round to" if s1.agrees and s0.agrees else "they do not both round to"
    return Example(
        6, "layernorm", "层归一化",
        formula="LayerNorm(x) = γ · (x − μ) / σ + β,   σ = √(mean((x − μ)²) + eps)",
        inputs={"x": x, "gamma": gamma, "beta": beta},
        steps=[s1, s0],
        note=(
            f"The article's σ = √(2/3) divides by n (the biased variance), as numformer and PyTorch "
            f"do; dividing by n − 1 would give σ = 1 and [-1, 0, 1]. The article has no eps; "
            f"PyTorch's default eps = 1e-5 goes inside the square root. The two differ by "
            f"{gap:.1e}, and {same} the article's 3 decimals: {fmt(y, 6)} (eps = 1e-5) and "
            f"{fmt(y0, 6)} (eps = 0)."
        ),
    )


# ---------------------------------------------------------------------------------------------
# 7. GELU
# ---------------------------------------------------------------------------------------------


def gelu_example() -> Example:
    x = _f([1.0])
    y_tanh, _ = gelu.forward(x, form="tanh")
    y_exact, _ = gelu.forward(x, form="exact")
    printed = approx(0.841, 3)
    return Example(
        7, "gelu", "GELU激活函数",
        formula="GELU(x) = x Φ(x) ≈ 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))",
        inputs={"x": 1.0},
        steps=[
            Step("tanh", "GELU(1), tanh form", y_tanh[0], printed, 6, result=True),
            Step("exact", "GELU(1), exact x Φ(x)", y_exact[0], printed, 6, result=True),
        ],
        note=(
            f"The article evaluates the tanh approximation: {y_tanh[0]:.6f}. The exact x Φ(x) "
            f"(numformer.ops.gelu.forward(x, form=\"exact\"), through erf) is "
            f"{y_exact[0]:.6f}; the two differ by {abs(y_exact[0] - y_tanh[0]):.1e}, below the "
            f"article's 3 decimals."
        ),
    )


# ---------------------------------------------------------------------------------------------
# 8. Softmax
# ---------------------------------------------------------------------------------------------


def softmax_example() -> Example:
    z = _f([1, 2, 3])
    p, _ = softmax.forward(z)
    return Example(
        8, "softmax", "Softmax 函数",
        formula="softmax(z)_i = e^(z_i) / Σ_j e^(z_j)",
        inputs={"z": z},
        steps=[Step("softmax", "softmax(z)", p, approx([0.090, 0.245, 0.665], 3), 6,
                    result=True)],
        note=(
            f"numformer.ops.softmax.forward subtracts max(z) first (the result is the same, and "
            f"e^z cannot overflow): {fmt(p, 6)}, summing to {p.sum():.6f}."
        ),
    )


# ---------------------------------------------------------------------------------------------
# 9. Cross-entropy
# ---------------------------------------------------------------------------------------------


def cross_entropy_example() -> Example:
    y = _f([0, 1, 0])  # one-hot target
    y_hat = _f([0.1, 0.7, 0.2])  # predicted distribution
    # The op takes logits. ŷ sums to 1, so softmax(ln ŷ) = ŷ: logits = ln ŷ reproduce ŷ exactly.
    logits = np.log(y_hat)[None, :]  # (N=1, V)
    targets = np.array([int(np.argmax(y))])  # (N,) class index of the one-hot y
    loss, _ = cross_entropy.forward(logits, targets)
    loss = float(loss)
    return Example(
        9, "cross_entropy", "损失函数",
        formula="L(y, ŷ) = −Σ_i y_i log(ŷ_i)",
        inputs={"y": y, "y_hat": y_hat},
        steps=[Step("loss", "L = −log(0.7)", loss, approx(0.357, 3), 6, result=True)],
        note=(
            f"log is the natural log: numformer.ops.cross_entropy.forward(ln ŷ, target 1) = "
            f"{loss:.6f}. With log10 it would be {loss / math.log(10):.3f}, with log2 "
            f"{loss / math.log(2):.3f}."
        ),
    )


# ---------------------------------------------------------------------------------------------
# 10. Dropout
# ---------------------------------------------------------------------------------------------


def dropout_example() -> Example:
    x = _f([1, 2, 3])
    p = 0.5
    mask = _f([1, 0, 1])  # the article's m
    # The op draws its own mask from rng; take the first rng seed whose draw is the article's m.
    for rng_seed in range(10_000):
        y, _ = dropout.forward(x, p, np.random.default_rng(rng_seed), training=True)
        if np.array_equal(y != 0, mask != 0):
            break
    else:
        raise RuntimeError("dropout never drew the article's mask [1, 0, 1]")
    y_eval, _ = dropout.forward(x, p, np.random.default_rng(rng_seed), training=False)
    kept = mask != 0
    scale = y[kept] / (mask * x)[kept]  # what the op multiplies the kept units by
    return Example(
        10, "dropout", "Dropout",
        formula="y = m ⊙ x  (article);  numformer (inverted dropout): y = m ⊙ x / (1 − p)",
        inputs={"x": x, "p": p, "m": mask},
        steps=[
            Step("y", "y, training (mask m)", y, exact([1, 0, 3]), 4, result=True),
            Step("y_eval", "y, inference", y_eval, None, 4),
        ],
        note=(
            f"The article's product m ⊙ x = [1, 0, 3] is right for its own formula, but that formula "
            f"leaves out the 1/(1 − p) scale. numformer.ops.dropout.forward(x, p=0.5, "
            f"rng=np.random.default_rng({rng_seed})) draws the article's mask [1, 0, 1] and returns "
            f"{fmt(y, 1)}: each kept unit is multiplied by {num(scale.max())} = 1/(1 − p), so that "
            f"E[y] = (1 − p) · x / (1 − p) = x and inference (training=False) is the identity, "
            f"{fmt(y_eval, 1)}. Without the scale E[y] = (1 − p) x = {num(1 - p)} x during "
            f"training, and the next layer would see inputs {num(1 / (1 - p))}× as large at "
            f"inference as in training."
        ),
        extra={"rng_seed": rng_seed},
    )


# ---------------------------------------------------------------------------------------------
# 11. Backpropagation
# ---------------------------------------------------------------------------------------------


def backpropagation_example() -> Example:
    W = _f([[1, 0, 1], [0, 1, 0]])  # W and x from the linear example
    x = _f([1, 2, 3])
    t = _f([3, 3])  # the target: the article names t but gives no number; this one is ours

    def loss(w):
        y, cache = linear.forward(x, w)  # y = W x
        return 0.5 * float(np.sum((y - t) ** 2)), y, cache

    L, y, cache = loss(W)
    dy = y - t  # ∂L/∂y for L = ½ ‖y − t‖²
    dx, dW, _ = linear.backward(dy, cache)  # ∂L/∂x = Wᵀ (y − t),  ∂L/∂W = (y − t) xᵀ

    h = 1e-6  # central differences; L is quadratic in W, so they are exact up to rounding
    dW_fd = np.zeros_like(W)
    for idx in np.ndindex(*W.shape):
        e = np.zeros_like(W)
        e[idx] = h
        dW_fd[idx] = (loss(W + e)[0] - loss(W - e)[0]) / (2 * h)
    fd_gap = float(np.max(np.abs(dW - dW_fd)))
    article_rule_gap = float(np.max(np.abs(dW - np.outer(dy, x))))  # the article's (y − t) · xᵀ

    return Example(
        11, "backpropagation", "反向传播",
        formula="∂L/∂W = ∂L/∂y · ∂y/∂W;  for y = W x, L = ½ ‖y − t‖²:  ∂L/∂W = (y − t) xᵀ",
        inputs={"W": W, "x": x, "t": t},
        ours=("t",),
        steps=[
            Step("y", "y = W x", y, None, 4),
            Step("L", "L = ½ ‖y − t‖²", L, None, 4),
            Step("dL/dy", "∂L/∂y = y − t", dy, None, 4),
            Step("dL/dW", "∂L/∂W = (y − t) xᵀ", dW, None, 4, result=True),
            Step("dL/dW_finite_diff", "∂L/∂W, central differences", dW_fd, None, 4),
            Step("dL/dx", "∂L/∂x = Wᵀ (y − t)", dx, None, 4),
        ],
        note=(
            f"The article gives the rule but no numbers. With W, x from the linear example and our "
            f"target t = {fmt(t, 0)}: y = W x = {fmt(y, 0)}, ∂L/∂y = y − t = {fmt(dy, 0)}, and "
            f"numformer.ops.linear.backward returns ∂L/∂W = {fmt(dW, 0)}. That is the article's "
            f"(y − t) xᵀ (gap {article_rule_gap:.1e}) and matches central finite differences of L "
            f"to {fd_gap:.1e}. The same backward also gives ∂L/∂x = Wᵀ (y − t) = {fmt(dx, 0)}, "
            f"the gradient passed on to the layer below."
        ),
        extra={"fd_gap": fd_gap, "article_rule_gap": article_rule_gap},
    )


# ---------------------------------------------------------------------------------------------
# 12. Gradient descent
# ---------------------------------------------------------------------------------------------


def _square(theta: np.ndarray):
    """L = θ² and ∇θ L through the linear op: θ is both the input and the weight of
    linear.forward(θ, θ) = θ · θ, so its gradient is the sum of the two paths, θ + θ = 2θ (the
    product rule, as for tied weights)."""
    L, cache = linear.forward(theta, theta.reshape(1, 1))  # (1,)
    d_input, d_weight, _ = linear.backward(np.ones_like(L), cache)
    return float(L[0]), d_input + d_weight.reshape(theta.shape)


def gradient_descent_example() -> Example:
    lr, n_steps = 0.1, 5
    theta = _f([3.0])  # updated in place by the optimizer
    opt = optim.SGD(theta, lr=lr)
    _, grad0 = _square(theta)
    path = [float(theta[0])]
    for _ in range(n_steps):
        _, grad = _square(theta)
        opt.step(grad)
        path.append(float(theta[0]))
    factor = path[2] / path[1]
    return Example(
        12, "gradient_descent", "梯度下降",
        formula="θ ← θ − η ∇θ L,   here L(θ) = θ²",
        inputs={"theta": 3.0, "lr": lr},
        steps=[
            Step("grad", "∇θ L = 2θ at θ = 3", grad0[0], exact(6), 4),
            Step("theta_1", "θ after one step", path[1], exact(2.4), 4, result=True),
            Step("theta_0..5", f"θ after steps 0..{n_steps}", path, None, 4),
        ],
        note=(
            f"numformer.optim.SGD(θ, lr={lr}) steps θ = 3 to {path[1]:.4f} with the gradient "
            f"{grad0[0]:.4f} from numformer.ops.linear's backward (θ² = linear(θ, θ); the two "
            f"paths add up to 2θ). Each further step multiplies θ by {factor:.4f} = 1 − 2η, "
            f"towards the minimum at 0: {fmt(path)}."
        ),
    )


# ---------------------------------------------------------------------------------------------
# 13. Adam
# ---------------------------------------------------------------------------------------------


def adam_example() -> Example:
    g = _f([0.1, -0.2])
    beta1, beta2, lr, eps = 0.9, 0.999, 0.001, 1e-8
    theta = _f([0.0, 0.0])  # θ0: the article keeps it symbolic; the step θ0 − θ1 does not use it
    theta0 = theta.copy()
    opt = optim.Adam(theta, lr=lr, betas=(beta1, beta2), eps=eps)
    opt.step(g.copy())
    state = opt.state_dict()
    t, m, v = state["step"], state["m"], state["v"]
    m_hat = m / (1 - beta1**t)  # the bias correction, read off the optimizer's own moments
    v_hat = v / (1 - beta2**t)
    step = theta0 - theta  # what the optimizer actually moved θ by

    printed_m = exact([0.01, -0.02])
    printed_v = exact([0.0001, 0.0004])
    printed_m_hat = exact([0.01, -0.02])
    printed_v_hat = exact([0.0001, 0.0004])
    printed_step = approx([0.1, -0.1], 1)
    steps = [
        Step("m_1", "m₁ = β₁ m₀ + (1 − β₁) g", m, printed_m, 6),
        Step("v_1", "v₁ = β₂ v₀ + (1 − β₂) g²", v, printed_v, 6),
        Step("m_hat_1", "m̂₁ = m₁ / (1 − β₁)", m_hat, printed_m_hat, 6),
        Step("v_hat_1", "v̂₁ = v₁ / (1 − β₂)", v_hat, printed_v_hat, 6),
        Step("step", "θ₀ − θ₁ = η m̂₁ / (√v̂₁ + ε)", step, printed_step, 6, result=True),
    ]
    by_key = {s.key: s for s in steps}

    # Where the article goes wrong, line by line, from the numbers above.
    lines = []
    if by_key["m_1"].agrees:
        lines.append(f"m₁ = {fmt(m, 2)} agrees with the article")
    if not by_key["v_1"].agrees:
        lines.append(
            f"v₁ = 0.001 · [0.01, 0.04] = {fmt(v, 5)}; the article writes [0.0001, 0.0004], "
            f"{times(printed_v.value, v)}× too large (0.001 · 0.01 = 0.00001)"
        )
    for key, hat, raw, beta, corr, mine, prev in (
        ("m_hat_1", "m̂₁", "m₁", "β₁", 1 - beta1, m_hat, printed_m),
        ("v_hat_1", "v̂₁", "v₁", "β₂", 1 - beta2, v_hat, printed_v),
    ):
        s = by_key[key]
        if not s.agrees and np.array_equal(s.printed.value, prev.value):
            lines.append(
                f"the article's {hat} equals its {raw}: the division by 1 − {beta} = {num(corr)} "
                f"is skipped; {hat} = {fmt(mine, 2)}"
            )
    printed_ratio = printed_m_hat.value / np.sqrt(printed_v_hat.value)
    true_ratio = m_hat / (np.sqrt(v_hat) + eps)
    lines.append(
        f"m̂₁ / √v̂₁ = {fmt(true_ratio, 4)}, and the article's own m̂₁, v̂₁ give "
        f"{fmt(printed_ratio, 0)} too, so even its line should end θ₀ − {fmt(lr * printed_ratio, 3)}"
    )
    if not by_key["step"].agrees:
        lines.append(
            f"numformer.optim.Adam moves θ by {fmt(step, 6)}; the article prints [0.1, -0.1], "
            f"{times(printed_step.value, step)}× too large"
        )
    note = (
        "Step by step: "
        + " ".join(f"({i}) {line}." for i, line in enumerate(lines, 1))
        + f" θ₀ = {fmt(theta0, 0)} is ours (the article keeps it symbolic; the step does not depend "
        "on it). At t = 1 the bias correction makes m̂₁ = g and "
        f"v̂₁ = g², so Adam's first step is about η · sign(g) = ±{num(lr)}, whatever the "
        "gradient's size."
    )
    return Example(
        13, "adam", "Adam优化器",
        formula=("m_t = β₁ m_{t−1} + (1 − β₁) g,  v_t = β₂ v_{t−1} + (1 − β₂) g²,  "
                 "m̂_t = m_t / (1 − β₁^t),  v̂_t = v_t / (1 − β₂^t),  "
                 "θ_t = θ_{t−1} − η m̂_t / (√v̂_t + ε)"),
        inputs={"g": g, "beta1": beta1, "beta2": beta2, "lr": lr, "eps": eps,
                "m_0": _f([0, 0]), "v_0": _f([0, 0]), "theta_0": theta0},
        ours=("theta_0",),
        steps=steps,
        note=note,
        extra={"theta_1": theta.copy(), "formula_step": lr * m_hat / (np.sqrt(v_hat) + eps)},
    )


# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# After the article: the formulas of today's large models (not in the article)
# ---------------------------------------------------------------------------------------------

_NOT_IN_ARTICLE = "Not in the article: "


def rope_example() -> Example:
    q, k = _f([1, 2, 3, 4]), _f([4, 3, 2, 1])  # one head of size hs = 4: pairs (x_0, x_2), (x_1, x_3)
    theta, hs = 10_000.0, 4

    def at(x, p):
        return rope.forward(x[None, :], theta, start=p)[0][0]  # x (T=1, hs) at position p

    cos, sin = rope.tables(2, hs, theta)  # positions 0 and 1, each angle twice
    angles = np.arctan2(sin[1, :hs // 2], cos[1, :hs // 2])  # position 1's angles p·ω_i, read back from the table
    q1 = at(q, 1)
    norms = _f([np.linalg.norm(q), np.linalg.norm(q1), np.linalg.norm(at(q, 1000))])
    pairs = [(0, 2), (3, 5), (10, 12)]  # (m, n): query at m, key at n, n − m = 2
    scores = _f([at(q, m) @ at(k, n) for m, n in pairs])
    back = float(at(q, 2) @ at(k, 0))  # the other way round: n − m = −2
    # the same score from one rotation: (R_m q)·(R_n k) = q·(R_{n−m} k)
    relative = float(q @ at(k, 2))
    return Example(
        14, "rope", "旋转位置编码",
        formula=("RoPE(x, p)_i = x_i cos(p ω_i) − x_{i+hs/2} sin(p ω_i),  "
                 "RoPE(x, p)_{i+hs/2} = x_{i+hs/2} cos(p ω_i) + x_i sin(p ω_i),  ω_i = θ^(−2i/hs)"),
        inputs={"q": q, "k": k, "theta": theta, "hs": hs},
        ours=("q", "k"),
        in_article=False,
        steps=[
            Step("angles_at_1", "angles p·ω_i at p = 1", angles, None, 4),
            Step("q_at_1", "RoPE(q, 1)", q1, None, 4),
            Step("norms", "‖q‖, ‖RoPE(q, 1)‖, ‖RoPE(q, 1000)‖", norms, None, 6),
            Step("scores_distance_2", "RoPE(q, m)·RoPE(k, m+2), m = 0, 3, 10", scores, None, 6, result=True),
            Step("score_distance_minus_2", "RoPE(q, 2)·RoPE(k, 0)", back, None, 6),
        ],
        note=(
            _NOT_IN_ARTICLE + f"Llama, Mistral and Qwen2 put positions into attention instead of adding the "
            f"article's table (formula 2): q and k are turned, pair by pair, by angles that grow with the "
            f"position. A rotation keeps lengths: ‖q‖ = {norms[0]:.6f} at every position "
            f"({fmt(norms, 6)}). Two rotations compose into the rotation by the difference, so the score "
            f"of a query at m and a key at n depends on n − m only: {fmt(scores, 6)} for (m, n) = (0, 2), "
            f"(3, 5), (10, 12), which is q·RoPE(k, 2) = {relative:.6f} (one rotation); reversed, at "
            f"distance −2, it is {back:.6f}. numformer.ops.rope pairs x_i with x_{{i+hs/2}} (q's pairs here: "
            f"(1, 3) turned by {angles[0]:g} rad at p = 1, (2, 4) by {angles[1]:g}), as Hugging Face "
            f"checkpoints do; the paper pairs neighbours (x_0, x_1), the same rotation with each head's "
            f"channels reordered."
        ),
        extra={"relative": relative},
    )


def rmsnorm_example() -> Example:
    x = _f([1, 2, 3])  # the LayerNorm example's vector
    gamma, eps = _f([1, 1, 1]), 1e-5
    y, cache = rmsnorm.forward(x, gamma, eps)
    rms = 1.0 / float(cache.rstd[0])  # √(mean(x²) + eps)
    y_ln, _ = layernorm.forward(x, gamma, None, eps)
    y_shift, _ = rmsnorm.forward(x + 10, gamma, eps)
    y_ln_shift, _ = layernorm.forward(x + 10, gamma, None, eps)
    y_scale, _ = rmsnorm.forward(3 * x, gamma, eps)
    return Example(
        15, "rmsnorm", "均方根归一化",
        formula="RMSNorm(x) = γ · x / √(mean(x²) + eps)",
        inputs={"x": x, "gamma": gamma, "eps": eps},
        in_article=False,
        steps=[
            Step("rms", "√(mean(x²) + eps)", rms, None, 6),
            Step("y", "RMSNorm(x)", y, None, 6, result=True),
            Step("layernorm", "LayerNorm(x), β = 0", y_ln, None, 6),
            Step("y_shifted", "RMSNorm(x + 10)", y_shift, None, 6),
            Step("layernorm_shifted", "LayerNorm(x + 10)", y_ln_shift, None, 6),
            Step("y_scaled", "RMSNorm(3x)", y_scale, None, 6),
        ],
        note=(
            _NOT_IN_ARTICLE + f"Llama, Mistral and Qwen2 normalise with RMSNorm instead of LayerNorm "
            f"(formula 6): the same division by a root mean square, but of x itself, not of x − μ, and no "
            f"β. On the LayerNorm example's x = [1, 2, 3]: √(14/3) = {rms:.6f}, so RMSNorm(x) = "
            f"{fmt(y, 6)}, where LayerNorm gives {fmt(y_ln, 6)}. Both forget a scale (RMSNorm(3x) = "
            f"{fmt(y_scale, 6)}, up to eps); only LayerNorm forgets a shift: LayerNorm(x + 10) = "
            f"{fmt(y_ln_shift, 6)}, RMSNorm(x + 10) = {fmt(y_shift, 6)}. One reduction per row instead of "
            f"two, and one term fewer in the backward (numformer.ops.rmsnorm derives it)."
        ),
    )


def swiglu_example() -> Example:
    x = _f([1, 2])  # C = 2
    W_gate = _f([[1, 0], [0, 1], [1, -1]])  # (H, C), H = 3
    W_up = _f([[1, 1], [0, 1], [1, 0]])
    W_down = _f([[1, 0, 1], [0, 1, -1]])  # (C, H)
    g, _ = linear.forward(x, W_gate)
    u, _ = linear.forward(x, W_up)
    h, _ = swiglu.forward(g, u)
    y, _ = linear.forward(h, W_down)
    silu, _ = swiglu.forward(g, np.ones_like(g))  # SiLU(g): the gate times an up of ones
    dg, _ = swiglu.backward(np.ones_like(g), swiglu.forward(g, np.ones_like(g))[1])  # SiLU'(g): dh = u = 1
    gelu_g, _ = gelu.forward(g)
    return Example(
        16, "swiglu", "SwiGLU门控前馈网络",
        formula="SwiGLU(x) = W_down (SiLU(W_gate x) ⊙ (W_up x)),  SiLU(g) = g σ(g),  SiLU′(g) = σ(g)(1 + g(1 − σ(g)))",
        inputs={"x": x, "W_gate": W_gate, "W_up": W_up, "W_down": W_down},
        ours=("W_gate", "W_up", "W_down"),
        in_article=False,
        steps=[
            Step("gate", "g = W_gate x", g, None, 4),
            Step("up", "u = W_up x", u, None, 4),
            Step("silu", "SiLU(g)", silu, None, 6),
            Step("silu_slope", "SiLU′(g)", dg, None, 6),
            Step("h", "h = SiLU(g) ⊙ u", h, None, 6),
            Step("y", "SwiGLU(x) = W_down h", y, None, 6, result=True),
        ],
        note=(
            _NOT_IN_ARTICLE + f"Llama's MLP gates one linear map with another instead of applying GELU "
            f"(formula 7) between two: three matrices of H × C where the GPT has two of 4C × C, so Llama "
            f"takes H ≈ 2/3 · 4C for about the same parameters. Here g = {fmt(g, 0)}, u = {fmt(u, 0)}: "
            f"SiLU(g) = {fmt(silu, 6)} (GELU's tanh form would give {fmt(gelu_g, 6)}: SiLU is a smooth "
            f"ReLU too, and lets −1 through as {silu[2]:.4f}), h = {fmt(h, 6)}, and W_down h = {fmt(y, 6)}. "
            f"SiLU′(g) = {fmt(dg, 6)} is what numformer.ops.swiglu's backward multiplies dh ⊙ u by; it "
            f"passes 1 ({dg[1]:.4f} at g = 2) and is still {dg[2]:.4f} at g = −1: a negative gate passes "
            f"a little gradient, where ReLU would pass none."
        ),
    )


def grouped_query_attention_example() -> Example:
    Q, K, V = _f(_Q), _f(_K), _f(_V)  # the attention example's matrices (T = 2, hs = 2)
    P = _f([[0, 1], [1, 0]])  # swaps two columns
    n_head, n_kv_head = 4, 2
    q = np.concatenate([Q, Q @ P, 2 * Q, Q], axis=1)[None]  # (1, T, nh·hs): query heads 1..4
    k = np.concatenate([K, K @ P], axis=1)[None]  # (1, T, nkv·hs): key heads 1, 2
    v = np.concatenate([V, V @ P], axis=1)[None]  # value heads 1, 2
    y, cache = mha.forward(q, k, v, n_head, causal=False, n_kv_head=n_kv_head)
    # the same with each key/value head copied for its query heads (Hugging Face's repeat_kv)
    group = n_head // n_kv_head
    k_rep = np.concatenate([k[..., j * 2:(j + 1) * 2] for j in range(n_kv_head) for _ in range(group)], axis=-1)
    v_rep = np.concatenate([v[..., j * 2:(j + 1) * 2] for j in range(n_kv_head) for _ in range(group)], axis=-1)
    y_rep, cache_rep = mha.forward(q, k_rep, v_rep, n_head, causal=False)
    gap = float(np.max(np.abs(y - y_rep)))
    dy = np.ones_like(y)
    _, dk, _ = mha.backward(dy, cache)  # (1, T, nkv·hs): each shared head's gradient
    _, dk_rep, _ = mha.backward(dy, cache_rep)  # (1, T, nh·hs): one per query head
    dk_summed = dk_rep.reshape(1, 2, n_kv_head, group, 2).sum(axis=3).reshape(1, 2, n_kv_head * 2)
    heads = [y[0, :, h * 2:(h + 1) * 2] for h in range(n_head)]
    return Example(
        17, "grouped_query_attention", "分组查询注意力",
        formula=("head_h = Attention(Q_h, K_j, V_j),  j = ⌊h / (n_head / n_kv_head)⌋;  "
                 "dK_j = Σ_{h in group j} dK_h"),
        inputs={"n_head": n_head, "n_kv_head": n_kv_head, "Q": q[0], "K": k[0], "V": v[0]},
        ours=("Q", "K", "V"),
        in_article=False,
        steps=[
            Step("head_1", "head 1 (K, V head 1)", heads[0], None, 4),
            Step("head_3", "head 3 (K, V head 2)", heads[2], None, 4),
            Step("output", "Concat(head_1 .. head_4)", y[0], None, 4, result=True),
            Step("cache_per_position", "K and V numbers per position: 2·nh·hs, 2·nkv·hs",
                 _f([2 * 2 * n_head, 2 * 2 * n_kv_head]), None, 0),
            Step("dK", "dK of the shared heads (dy = 1)", dk[0], None, 6),
        ],
        note=(
            _NOT_IN_ARTICLE + f"Llama 2 70B, Llama 3, Mistral and Qwen2 give several query heads one key/"
            f"value head: here 4 query heads share 2 (heads 1, 2 read the first, heads 3, 4 the second; "
            f"n_kv_head = 1 is multi-query attention, n_kv_head = n_head the article's formula 4). Q's "
            f"columns are the heads' queries side by side, 2 each: the attention example's Q, Q with its "
            f"columns swapped, 2Q, Q; K's and V's are the key/value heads', the attention example's K and V, "
            f"then the same swapped. Head 1 is the attention example's output again, {fmt(heads[0])}. Copying each key/value head for "
            f"its query heads and running ordinary multi-head attention gives the same output "
            f"{'exactly' if gap == 0 else f'to {gap:.1e}'}; "
            f"numformer.ops.mha never makes the copies (attention broadcasts the shared heads), and its KV "
            f"cache holds {2 * 2 * n_kv_head} numbers per position and layer instead of {2 * 2 * n_head}. "
            f"In the backward a shared head collects the gradients of its whole group: dK = {fmt(dk[0], 6)}, "
            f"the copies' gradients summed per group."
        ),
        extra={"output_repeated": y_rep[0], "dk_summed": dk_summed[0]},
    )


LATER_EXAMPLES = {
    "rope": rope_example,
    "rmsnorm": rmsnorm_example,
    "swiglu": swiglu_example,
    "grouped_query_attention": grouped_query_attention_example,
}
assert tuple(LATER_EXAMPLES) == LATER


EXAMPLES = {
    "linear": linear_example,
    "positional_encoding": positional_encoding_example,
    "attention": attention_example,
    "multi_head_attention": multi_head_attention_example,
    "residual": residual_example,
    "layernorm": layernorm_example,
    "gelu": gelu_example,
    "softmax": softmax_example,
    "cross_entropy": cross_entropy_example,
    "dropout": dropout_example,
    "backpropagation": backpropagation_example,
    "gradient_descent": gradient_descent_example,
    "adam": adam_example,
}
assert tuple(EXAMPLES) == NAMES


def explain(names=None) -> list[Example]:
    """Compute the worked examples named: the article's thirteen and the later four (when None,
    all of them in that order)."""
    return [(EXAMPLES.get(name) or LATER_EXAMPLES[name])() for name in (ALL_NAMES if names is None else names)]
