"""The formulas for the explorer: MathML, and the worked examples as `numformer explain` computes
them. A GPT's page has the article's thirteen; a Llama's has the ten of them that it runs and the
four it has instead of the other three (RoPE for the position table, RMSNorm for LayerNorm, SwiGLU
for the GELU MLP) or besides (grouped-query attention), which are not in the article (FAMILY_FORMULAS).

Each formula is written out as MathML (browsers render it without any script or font download).
The worked example, its computed values and its verdict come from numformer.explain.examples,
the same objects `numformer explain --json` prints, so the page and the command cannot disagree.
"""

from __future__ import annotations

from html import escape

from numformer.explain import LATER, NAMES
from numformer.explain.examples import explain, num

# ------------------------------------------------------------------------------ MathML builders


def _mi(s):
    return f"<mi>{escape(s)}</mi>"


def _mn(s):
    return f"<mn>{escape(str(s))}</mn>"


def _mo(s):
    return f"<mo>{escape(s)}</mo>"


def _text(s, before=True):
    """Words beside a formula, set off from it by a space (before them, or after)."""
    space = '<mspace width="1em"></mspace>'
    words = f"<mtext>{escape(s)}</mtext>"
    return space + words if before else words + space


def _row(*parts):
    return "<mrow>" + "".join(parts) + "</mrow>"


def _frac(a, b):
    return f"<mfrac>{a}{b}</mfrac>"


def _sup(a, b):
    return f"<msup>{a}{b}</msup>"


def _sub(a, b):
    return f"<msub>{a}{b}</msub>"


def _subsup(a, b, c):
    return f"<msubsup>{a}{b}{c}</msubsup>"


def _sqrt(a):
    return f"<msqrt>{a}</msqrt>"


def _paren(*parts):
    return _row(_mo("("), *parts, _mo(")"))


def _fn(name, *args):
    """name(arg1, arg2, ...)"""
    inner = []
    for i, a in enumerate(args):
        if i:
            inner.append(_mo(","))
        inner.append(a)
    return _row(_mi(name), _mo("\u2061"), _paren(*inner))


def _lines(*rows):
    """Rows of one formula, stacked and left-aligned."""
    cells = "".join(f"<mtr><mtd>{r}</mtd></mtr>" for r in rows)
    return f'<mtable columnalign="left">{cells}</mtable>'


def _math(body):
    return f'<math displaystyle="true">{body}</math>'


def _angle():
    # pos / 10000^(2i/d)
    return _frac(_mi("pos"), _sup(_mn(10000), _row(_mn(2), _mi("i"), _mo("/"), _mi("d"))))


_T = _mi("\u22a4")                                           # the transpose mark ⊤


def _hat(s):
    return f'<mover accent="true"><mi>{escape(s)}</mi><mo>\u02c6</mo></mover>'


_HAT_Y = _hat("y")


def _adam():
    t, t_1 = _mi("t"), _row(_mi("t"), _mo("−"), _mn(1))
    b1, b2 = _sub(_mi("β"), _mn(1)), _sub(_mi("β"), _mn(2))
    m_t, v_t, g_t = _sub(_mi("m"), t), _sub(_mi("v"), t), _sub(_mi("g"), t)
    m_hat, v_hat = _sub(_hat("m"), t), _sub(_hat("v"), t)
    return _math(_lines(
        _row(m_t, _mo("="), b1, _sub(_mi("m"), t_1), _mo("+"), _paren(_mn(1), _mo("−"), b1), g_t),
        _row(v_t, _mo("="), b2, _sub(_mi("v"), t_1), _mo("+"), _paren(_mn(1), _mo("−"), b2),
             _subsup(_mi("g"), t, _mn(2))),
        _row(m_hat, _mo("="), _frac(m_t, _row(_mn(1), _mo("−"), _subsup(_mi("β"), _mn(1), t))), _mo(","),
             v_hat, _mo("="), _frac(v_t, _row(_mn(1), _mo("−"), _subsup(_mi("β"), _mn(2), t)))),
        _row(_sub(_mi("θ"), t), _mo("="), _sub(_mi("θ"), t_1), _mo("−"),
             _frac(_row(_mi("η"), m_hat), _row(_sqrt(v_hat), _mo("+"), _mi("ε")))),
    ))


MATHML = {
    "linear": _math(_row(_mi("y"), _mo("="), _mi("W"), _mi("x"), _mo("+"), _mi("b"))),
    "positional_encoding": _math(_lines(
        _row(_fn("PE", _mi("pos"), _row(_mn(2), _mi("i"))), _mo("="), _fn("sin", _angle())),
        _row(_fn("PE", _mi("pos"), _row(_mn(2), _mi("i"), _mo("+"), _mn(1))), _mo("="), _fn("cos", _angle())),
    )),
    "attention": _math(_row(
        _fn("Attention", _mi("Q"), _mi("K"), _mi("V")), _mo("="),
        _fn("softmax", _frac(_row(_mi("Q"), _sup(_mi("K"), _T)), _sqrt(_sub(_mi("d"), _mi("k"))))),
        _mi("V"))),
    "multi_head_attention": _math(_lines(
        _row(_fn("MultiHead", _mi("Q"), _mi("K"), _mi("V")), _mo("="),
             _fn("Concat", _sub(_mi("head"), _mn(1)), _mo("…"), _sub(_mi("head"), _mi("h"))),
             _sup(_mi("W"), _mi("O"))),
        _row(_sub(_mi("head"), _mi("i")), _mo("="),
             _fn("Attention", _row(_mi("Q"), _subsup(_mi("W"), _mi("i"), _mi("Q"))),
                 _row(_mi("K"), _subsup(_mi("W"), _mi("i"), _mi("K"))),
                 _row(_mi("V"), _subsup(_mi("W"), _mi("i"), _mi("V"))))),
    )),
    "residual": _math(_row(_mi("y"), _mo("="), _fn("Layer", _mi("x")), _mo("+"), _mi("x"))),
    "layernorm": _math(_lines(
        _row(_fn("LayerNorm", _mi("x")), _mo("="), _mi("γ"), _mo("⊙"),
             _frac(_row(_mi("x"), _mo("−"), _mi("μ")), _mi("σ")), _mo("+"), _mi("β")),
        _row(_mi("μ"), _mo("="), _frac(_mn(1), _mi("C")), _row(_sub(_mo("∑"), _mi("j")), _sub(_mi("x"), _mi("j")))),
        _row(_mi("σ"), _mo("="), _sqrt(_row(
            _frac(_mn(1), _mi("C")), _sub(_mo("∑"), _mi("j")),
            _sup(_paren(_sub(_mi("x"), _mi("j")), _mo("−"), _mi("μ")), _mn(2)), _mo("+"), _mi("ε")))),
    )),
    "gelu": _math(_row(
        _fn("GELU", _mi("x")), _mo("="), _mi("x"), _mi("Φ"), _paren(_mi("x")), _mo("≈"),
        _frac(_mn(1), _mn(2)), _mi("x"),
        _paren(_mn(1), _mo("+"), _fn("tanh", _row(
            _sqrt(_frac(_mn(2), _mi("π"))),
            _paren(_mi("x"), _mo("+"), _mn("0.044715"), _sup(_mi("x"), _mn(3)))))))),
    "softmax": _math(_row(
        _sub(_fn("softmax", _mi("z")), _mi("i")), _mo("="),
        _frac(_sup(_mi("e"), _sub(_mi("z"), _mi("i"))),
              _row(_sub(_mo("∑"), _mi("j")), _sup(_mi("e"), _sub(_mi("z"), _mi("j"))))))),
    "cross_entropy": _math(_row(
        _fn("L", _mi("y"), _HAT_Y), _mo("="), _mo("−"), _sub(_mo("∑"), _mi("i")),
        _sub(_mi("y"), _mi("i")), _fn("log", _sub(_HAT_Y, _mi("i"))))),
    "dropout": _math(_lines(
        _row(_mi("y"), _mo("="), _mi("m"), _mo("⊙"), _mi("x"), _text("(the article)")),
        _row(_mi("y"), _mo("="), _frac(_row(_mi("m"), _mo("⊙"), _mi("x")), _row(_mn(1), _mo("−"), _mi("p"))),
             _mo(","), _sub(_mi("m"), _mi("i")), _mo("∼"), _fn("Bernoulli", _row(_mn(1), _mo("−"), _mi("p"))),
             _text("(numformer: inverted dropout)")),
    )),
    "backpropagation": _math(_lines(
        _row(_frac(_row(_mi("∂"), _mi("L")), _row(_mi("∂"), _mi("W"))), _mo("="),
             _frac(_row(_mi("∂"), _mi("L")), _row(_mi("∂"), _mi("y"))), _mo("·"),
             _frac(_row(_mi("∂"), _mi("y")), _row(_mi("∂"), _mi("W")))),
        _row(_text("for", before=False), _mi("y"), _mo("="), _mi("W"), _mi("x"), _mo(","), _mi("L"), _mo("="),
             _frac(_mn(1), _mn(2)), _sup(_row(_mo("‖"), _mi("y"), _mo("−"), _mi("t"), _mo("‖")), _mn(2)),
             _mo(":"), _frac(_row(_mi("∂"), _mi("L")), _row(_mi("∂"), _mi("W"))), _mo("="),
             _paren(_mi("y"), _mo("−"), _mi("t")), _sup(_mi("x"), _T)),
    )),
    "gradient_descent": _math(_row(
        _mi("θ"), _mo("←"), _mi("θ"), _mo("−"), _mi("η"), _sub(_mo("∇"), _mi("θ")), _mi("L"))),
    "adam": _adam(),
}


def _i_half():
    return _row(_mi("i"), _mo("+"), _mi("hs"), _mo("/"), _mn(2))


def _rope():
    angle = _row(_mi("p"), _sub(_mi("ω"), _mi("i")))
    x_i, x_h = _sub(_mi("x"), _mi("i")), _sub(_mi("x"), _i_half())
    return _math(_lines(
        _row(_sub(_fn("RoPE", _mi("x"), _mi("p")), _mi("i")), _mo("="), x_i, _fn("cos", angle), _mo("−"), x_h,
             _fn("sin", angle)),
        _row(_sub(_fn("RoPE", _mi("x"), _mi("p")), _i_half()), _mo("="), x_h, _fn("cos", angle), _mo("+"), x_i,
             _fn("sin", angle)),
        _row(_sub(_mi("ω"), _mi("i")), _mo("="),
             _sup(_mi("θ"), _row(_mo("−"), _mn(2), _mi("i"), _mo("/"), _mi("hs"))),
             _text("pair i: channels i and i + hs/2 of a head; p: the position")),
    ))


_MATHML_LATER = {
    "rope": _rope(),
    "rmsnorm": _math(_row(
        _fn("RMSNorm", _mi("x")), _mo("="), _mi("γ"), _mo("⊙"),
        _frac(_mi("x"), _sqrt(_row(_frac(_mn(1), _mi("C")), _sub(_mo("∑"), _mi("j")),
                                   _subsup(_mi("x"), _mi("j"), _mn(2)), _mo("+"), _mi("ε")))))),
    "swiglu": _math(_lines(
        _row(_fn("SwiGLU", _mi("x")), _mo("="), _sub(_mi("W"), _mi("down")),
             _paren(_fn("SiLU", _row(_sub(_mi("W"), _mi("gate")), _mi("x"))), _mo("⊙"),
                    _paren(_sub(_mi("W"), _mi("up")), _mi("x")))),
        _row(_fn("SiLU", _mi("g")), _mo("="), _mi("g"), _mi("σ"), _paren(_mi("g")), _mo("="),
             _frac(_mi("g"), _row(_mn(1), _mo("+"), _sup(_mi("e"), _row(_mo("−"), _mi("g")))))),
    )),
    "grouped_query_attention": _math(_lines(
        _row(_sub(_mi("head"), _mi("h")), _mo("="),
             _fn("Attention", _row(_mi("Q"), _subsup(_mi("W"), _mi("h"), _mi("Q"))),
                 _row(_mi("K"), _subsup(_mi("W"), _mi("j"), _mi("K"))),
                 _row(_mi("V"), _subsup(_mi("W"), _mi("j"), _mi("V"))))),
        _row(_mi("j"), _mo("="), _row(_mo("⌊"), _mi("h"), _mo("/"),
                                      _paren(_sub(_mi("n"), _mi("head")), _mo("/"), _sub(_mi("n"), _mi("kv"))),
                                      _mo("⌋")),
             _text("query heads h share key/value head j")),
    )),
}
assert tuple(_MATHML_LATER) == LATER
MATHML.update(_MATHML_LATER)

# The formulas each family's page shows, in `numformer explain`'s order: the article's thirteen for
# a GPT; for a Llama the ten it runs, then the four later ones, which replace the position table
# (formula 2), LayerNorm (6) and GELU (7) and add grouped-query attention.
FAMILY_FORMULAS = {
    "gpt2": NAMES,
    "llama": tuple(n for n in NAMES if n not in ("positional_encoding", "layernorm", "gelu")) + LATER,
}


# ------------------------------------------------------------------------------ the worked examples


def verdict(ex) -> tuple[str, str]:
    """(kind, text): ("agrees", "agrees"), ("differs", "differs by 0.3395"),
    ("incomplete", "incomplete in the article: computed here") or, for a later formula,
    ("later", "not in the article")."""
    if not ex.in_article:
        return "later", "not in the article"
    if ex.agrees is None:
        return "incomplete", "incomplete in the article: computed here"
    if ex.agrees:
        return "agrees", "agrees"
    return "differs", f"differs by {num(ex.diff)}"


def formulas_data(family: str = "gpt2") -> list[dict]:
    """One object per formula the family's page shows (FAMILY_FORMULAS), in `numformer explain`'s
    order: number, name, title_zh, formula (text), mathml, inputs, steps (label, computed,
    decimals, printed, agrees, diff as text, result), verdict, note, in_article."""
    out = []
    for ex in explain(FAMILY_FORMULAS[family]):
        doc = ex.to_json()                  # what `numformer explain --json` prints for it
        printed = doc["article_printed"] or {}
        kind, text = verdict(ex)
        steps = [{"key": s.key, "label": s.label, "computed": doc["computed"][s.key],
                  "decimals": s.decimals,
                  "printed": None if s.printed is None else {"value": printed[s.key], "decimals": s.printed.decimals},
                  "agrees": s.agrees, "diff": None if s.diff is None else num(s.diff),
                  "result": s.result}
                 for s in ex.steps]
        out.append({
            "number": ex.number, "name": ex.name, "title_zh": ex.title_zh, "formula": doc["formula"],
            "mathml": MATHML[ex.name], "inputs": doc["inputs"], "ours": list(ex.ours),
            "steps": steps, "agrees": doc["agrees"], "verdict": kind, "verdict_text": text,
            "note": doc["note"], "in_article": ex.in_article,
        })
    return out
