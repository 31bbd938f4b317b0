"""MkDocs hooks of numformer's site (mkdocs.yml: hooks). Everything here runs when the site is built.

- Math: `$...$` and `$$...$$` in the pages become MathML (latex2mathml), so the browser draws the
  formulas with no script, no web font and no request to another host.
- The formula pages: one per entry of numformer.explain.source.HOMES, in its order (the article's
  thirteen, then the formulas numformer adds). A page's teaching part is docs/formulas/NAME.md,
  written by hand (when it is missing, the page is made from the op's docstring alone); this hook
  appends to it, from numformer itself:
    the code, included from the source file (ast gives each function's lines);
    the derivation as the op's docstring states it (what `numformer explain NAME` prints);
    the article's worked example with numformer's computed numbers and verdict
      (numformer.explain.examples), or, for a formula beyond the article, its example from
      numformer.explain.examples (the later four, which `numformer explain` shows after the
      article's) or one computed here (LoRA, erf, the quantized formats: BEYOND);
    how it is checked: the op's rows of the op table (numformer.ops.table) and its PyTorch reference
      (for the quantized formats, the rows of QUANT_CASES and the tests against the gguf package).
- The formulas' index (docs/formulas/index.md) gets the table of all of them, with their verdicts.

So a new op's page is one more entry in HOMES (and its worked example in numformer.explain).
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import textwrap
from pathlib import Path

import latex2mathml.converter
import numpy as np
from markdown.extensions import Extension
from markdown.inlinepatterns import InlineProcessor
from markdown.preprocessors import Preprocessor
from mkdocs.structure.files import File

from numformer.explain.examples import EXAMPLES, LATER_EXAMPLES
from numformer.explain.source import HOMES, docstring_section
from numformer.ops import erf, linear, lora, quant
from numformer.ops.table import CASES, FAST_SIZES, QUANT_CASES

ROOT = Path(__file__).resolve().parents[2]          # the repository
SECTION = "The formulas"                             # the nav section the formula pages go into

# What a page includes of the code, where it is not the whole module below its docstring:
# "module:qualname" or "module" (everything after the docstring).
CODE = {
    "backpropagation": ("numformer.ops.linear:backward", "numformer.model.gpt:block_backward"),
    "gradient_descent": ("numformer.optim.sgd:SGD",),
    "adam": ("numformer.optim.adam:Adam.step", "numformer.optim.adam:Adam._update"),
    "quant": tuple(f"numformer.ops.quant:{f}" for f in (
        "quantize_int8", "int8_values", "bf16_bits", "bf16_values",
        "_q8_0", "_q4_0", "_q4_1", "_encode_q8_0", "_encode_q4_0", "_encode_q4_1")),
}


# ---------------------------------------------------------------------------------- math as MathML

def mathml(tex: str, display: bool) -> str:
    """TeX -> one <math> element."""
    return latex2mathml.converter.convert(tex.strip(), display="block" if display else "inline")


class _BlockMath(Preprocessor):
    """$$ ... $$ on lines of their own (after the code fences are put aside) -> MathML, stashed."""

    def run(self, lines):
        out, buf = [], None
        for line in lines:
            s = line.strip()
            if buf is None and s.startswith("$$"):
                buf = [s[2:]]
                if len(s) > 2 and s.endswith("$$"):
                    buf, body = None, s[2:-2]
                    out += ["", self.md.htmlStash.store(mathml(body, True)), ""]
                continue
            if buf is not None:
                if s.endswith("$$"):
                    buf.append(s[:-2])
                    out += ["", self.md.htmlStash.store(mathml("\n".join(buf), True)), ""]
                    buf = None
                else:
                    buf.append(line)
                continue
            out.append(line)
        if buf is not None:
            raise ValueError("a $$ block is never closed")
        return out


class _InlineMath(InlineProcessor):
    def handleMatch(self, m, data):
        return self.md.htmlStash.store(mathml(m.group(1), False)), m.start(0), m.end(0)


class MathML(Extension):
    def extendMarkdown(self, md):
        md.preprocessors.register(_BlockMath(md), "numformer_block_math", 24)   # after fenced code (25)
        md.inlinePatterns.register(_InlineMath(r"(?<![\\$\w])\$(?=\S)(.+?)(?<=\S)\$(?![\w$])", md),
                                   "numformer_inline_math", 185)                # after `code` (190)


# ---------------------------------------------------------------------------------- MkDocs events

def on_config(config):
    config.markdown_extensions.append(MathML())
    for item in config.nav or []:
        if isinstance(item, dict) and SECTION in item:
            pages = item[SECTION] if isinstance(item[SECTION], list) else [item[SECTION]]
            item[SECTION] = pages + [{_title(name): f"formulas/{name}.md"} for name in HOMES]
    return config


def on_files(files, config):
    """A formula without a page of its own gets one made from its op's docstring."""
    for name in HOMES:
        if files.get_file_from_path(f"formulas/{name}.md") is None:
            files.append(File.generated(config, f"formulas/{name}.md", content=_default_page(name)))
    return files


def on_page_markdown(markdown, page, config, files):
    uri = page.file.src_uri
    if uri == "formulas/index.md":
        return markdown.replace("<!-- numformer:formula-table -->", formula_table())
    m = re.fullmatch(r"formulas/(\w+)\.md", uri)
    if m and m.group(1) in HOMES:
        return markdown.rstrip() + "\n\n" + generated_sections(m.group(1))
    return markdown


# ---------------------------------------------------------------------------------- the pages

def _title(name: str) -> str:
    h = HOMES[name]
    if h.article:
        return f"{list(EXAMPLES).index(name) + 1}. {h.title}"
    return h.title


def _default_page(name: str) -> str:
    h = HOMES[name]
    return f"# {_title(name)}\n\nThe formula of `{h.module_name}`, as its docstring states it:\n\n" \
           f"```text\n{inspect.cleandoc(h.module.__doc__)}\n```\n"


def formula_table() -> str:
    rows = ["| # | formula | where it lives | the article's worked example |", "|---|---|---|---|"]
    for name, h in HOMES.items():
        ex = EXAMPLES[name]() if name in EXAMPLES else None
        verdict = "beyond the article" if ex is None else _verdict_short(ex)
        number = _title(name).split(".")[0] if h.article else "+"
        rows.append(f"| {number} | [{h.title}]({name}.md) | `{h.where()}` | {verdict} |")
    return "\n".join(rows)


def _verdict_short(ex) -> str:
    if ex.agrees is None:
        return "stops before the result: numformer computes it"
    if ex.agrees:
        return "agrees"
    return f"**wrong**, by {_num(ex.diff)}"


def generated_sections(name: str) -> str:
    h = HOMES[name]
    parts = [code_section(name), derivation_section(name)]
    if name in EXAMPLES:
        parts.append(example_section(EXAMPLES[name]()))
    elif name in LATER_EXAMPLES:
        parts.append(later_example_section(LATER_EXAMPLES[name]()))
    elif name in BEYOND:
        parts.append(BEYOND[name]())
    if h.table is not None:
        parts.append(checks_section(h.table))
    return "\n\n".join(parts) + "\n"


# ---- the code, from the source file

def source_lines(spec: str):
    """(path, first line, last line, lines) of "module:qualname" (a function or class, nested by
    dots) or of "module" (everything below its docstring), read from the file with ast: nothing is
    imported (numformer.reference imports torch, which the site does not need)."""
    module, _, qualname = spec.partition(":")
    path = ROOT / "src" / (module.replace(".", "/") + ".py")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    if not qualname:
        body = tree.body[1:] if ast.get_docstring(tree) else tree.body
        first, last = body[0].lineno, len(lines)
    else:
        node = tree
        for part in qualname.split("."):
            node = next(n for n in node.body
                        if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part)
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        last = node.end_lineno
    while not lines[last - 1].strip():
        last -= 1
    return path.relative_to(ROOT).as_posix(), first, last, lines[first - 1:last]


def _code_block(spec: str) -> str:
    path, first, last, lines = source_lines(spec)
    body = textwrap.dedent("\n".join(lines))
    return f'```python title="{path}, lines {first}–{last}" linenums="{first}"\n{body}\n```'


def code_section(name: str) -> str:
    h = HOMES[name]
    pieces = [_code_block(spec) for spec in CODE.get(name, (h.module_name,))]
    where = ", ".join(f"`{f}`" for f in h.functions)
    return (f"## The code\n\n{where} in `{h.module_name}`, included from the source file when this site "
            f"was built, so the page and the code cannot disagree:\n\n" + "\n\n".join(pieces))


def derivation_section(name: str) -> str:
    h = HOMES[name]
    what = "update rule" if h.derives == "update" else h.derives
    return (f"### The {what} as the docstring states it\n\nThe same derivation in the module's docstring, "
            f"which `numformer explain {name}` prints too:\n\n```text\n" + "\n".join(h.derivation()) + "\n```"
            if name in EXAMPLES else
            f"### The {what} as the docstring states it\n\n```text\n" + "\n".join(h.derivation()) + "\n```")


# ---- the worked example, computed by numformer.explain

def _cell(x: float, decimals: int | None) -> str:
    if decimals is None:
        s = np.format_float_positional(float(x), trim="-") if not 0 < abs(x) < 1e-4 else \
            np.format_float_scientific(float(x), trim="-")
    else:
        s = f"{float(x):.{decimals}f}"
    if s.startswith("-") and float(s) == 0.0:
        s = s[1:]
    return s


def tex_value(value, decimals: int | None = None) -> str:
    """A number, vector (a row) or matrix as TeX."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        return _cell(a, decimals)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim == 2:
        rows = [" & ".join(_cell(x, decimals) for x in row) for row in a]
        return r"\begin{bmatrix}" + r" \\ ".join(rows) + r"\end{bmatrix}"
    return r",\;".join(tex_value(m, decimals) for m in a)


def _math_cell(value, decimals=None) -> str:
    return f"${tex_value(value, decimals)}$"


def _num(x) -> str:
    return np.format_float_positional(float(x), precision=4, unique=False, fractional=False, trim="-")


def example_section(ex) -> str:
    inputs = []
    for key, value in ex.inputs.items():
        shown = f"`{value}`" if isinstance(value, str) else _math_cell(value)
        mark = " (numformer's choice: the article gives none)" if key in ex.ours else ""
        inputs.append(f"| `{key}` | {shown}{mark} |")
    rows = []
    for s in ex.steps:
        printed = "—" if s.printed is None else (
            ("= " if s.printed.exact else "≈ ") + _math_cell(s.printed.value,
                                                               None if s.printed.exact else s.printed.decimals))
        if s.printed is None:
            check = "not printed"
        elif s.agrees:
            check = "agrees" if s.printed.exact else f"agrees ({s.printed.decimals} decimals)"
        else:
            check = f"**differs** by {_num(s.diff)}"
        label = s.label.replace("|", r"\|")
        rows.append(f"| {'**' + label + '**' if s.result else label} | {printed} | "
                    f"{_math_cell(s.computed, s.decimals)} | {check} |")
    if ex.agrees is None:
        box = '!!! info "The article stops before the result"\n    numformer computes it: the bold row.'
    elif ex.agrees:
        box = '!!! success "The article\'s result agrees with numformer\'s"'
    else:
        box = f'!!! failure "The article\'s result is wrong: it differs by {_num(ex.diff)}"'
    return "\n".join([
        "## The article's worked example, computed",
        "",
        f"The article's example ({ex.title_zh}), recomputed by numformer's own ops when this site was "
        f"built (`numformer.explain.examples`, the numbers of `numformer explain {ex.name}`).",
        "",
        "| input | value |", "|---|---|", *inputs,
        "",
        "| quantity | the article prints | numformer computes | check |", "|---|---|---|---|", *rows,
        "",
        box,
        "",
        ex.note,
    ])


def later_example_section(ex) -> str:
    """A formula after the article (numformer.explain.LATER): its example as `numformer explain`
    computes it, with nothing printed to check."""
    inputs = [f"| `{key}` | {f'`{value}`' if isinstance(value, str) else _math_cell(value)} |"
              for key, value in ex.inputs.items()]
    rows = []
    for s in ex.steps:
        label = s.label.replace("|", r"\|")
        rows.append(f"| {'**' + label + '**' if s.result else label} | {_math_cell(s.computed, s.decimals)} |")
    return "\n".join([
        "## A worked example, computed",
        "",
        f"Not from the article: computed by numformer's own ops when this site was built "
        f"(`numformer.explain.examples`, the numbers of `numformer explain {ex.name}`).",
        "",
        "| input | value |", "|---|---|", *inputs,
        "",
        "| quantity | numformer computes |", "|---|---|", *rows,
        "",
        ex.note,
    ])


# ---- examples for the formulas beyond the article, computed here

def _lora_example() -> str:
    rng = np.random.default_rng(0)
    x = np.array([[1.0, 2.0, 3.0]])                       # (N=1, C_in=3)
    W = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])      # the article's linear map
    b = np.array([0.5, -0.5])
    A = np.round(rng.uniform(-1, 1, (1, 3)), 1)           # r = 1
    B = np.array([[1.0], [-1.0]])
    alpha = 2.0
    y, cache = lora.forward(x, W, b, A, B, alpha=alpha)
    y_merged, _ = linear.forward(x, W + (alpha / 1) * B @ A, b)
    y_plain, _ = linear.forward(x, W, b)
    dx, dW, db, dA, dB = lora.backward(np.ones_like(y), cache)
    return "\n".join([
        "## A worked example, computed",
        "",
        "Not from the article: the article's linear map (formula 1) with a rank-1 adapter, computed by "
        "`numformer.ops.lora` when this site was built.",
        "",
        "| | value |", "|---|---|",
        f"| $x$, $W$, $b$ | {_math_cell(x)}, {_math_cell(W)}, {_math_cell(b)} |",
        f"| $A$ (r = 1), $B$, $\\alpha$ | {_math_cell(A)}, {_math_cell(B)}, ${alpha:g}$ |",
        f"| $x W^\\top + b$, the layer without its adapter | {_math_cell(y_plain)} |",
        f"| $y$ = `lora.forward(x, W, b, A, B, alpha)` | {_math_cell(y)} |",
        f"| the same through the merged weight $W + \\frac{{\\alpha}}{{r}} B A$ | {_math_cell(y_merged)} "
        f"(difference {_num(np.max(np.abs(y - y_merged)))}) |",
        f"| $\\partial L/\\partial A$, $\\partial L/\\partial B$ for $L = \\sum y$ | {_math_cell(dA)}, "
        f"{_math_cell(dB)} |",
    ])


def _erf_example() -> str:
    xs = np.array([-3.0, -0.5, 0.0, 0.3, 1.0, 2.5, 5.0])
    rows = []
    for x in xs:
        ours, ref = float(erf.erf(x)), math.erf(x)
        rel = abs(ours - ref) / abs(ref) if ref else abs(ours - ref)
        rows.append(f"| {x:g} | {ours!r} | {ref!r} | {rel:.1e} |")
    phi = float(erf.normal_cdf(np.float64(-20.0)))
    phi_ref = 0.5 * math.erfc(20.0 / math.sqrt(2.0))
    return "\n".join([
        "## A worked example, computed",
        "",
        "`numformer.ops.erf.erf` in float64 against Python's `math.erf`, computed when this site was built:",
        "",
        "| x | numformer's erf(x) | math.erf(x) | relative difference |", "|---:|---:|---:|---:|", *rows,
        "",
        f"In the far tail, $\\Phi(-20)$ = `normal_cdf(-20.0)` = {phi!r} (from `math.erfc`: {phi_ref!r}): "
        f"a real number, where $1 - \\Phi(20)$ computed as a difference would be 0.",
        "",
        "## How it is checked",
        "",
        "`tests/ops/test_erf.py` holds erf and erfc to `math.erf` and `math.erfc` over $[-30, 30]$, tiny "
        "arguments and the special values ($\\pm 0$, $\\pm\\infty$, NaN), in float64, float32 and float16; "
        "the float32 $\\Phi$ to its ulp bound. The exact GELU rows of the op table (below GELU's page) "
        "check $\\Phi$ and $\\varphi$ through GELU's backward against PyTorch.",
    ])


def _quant_example() -> str:
    """The formats of numformer.ops.quant on one block of 32 weights, computed at build time, and
    the other worst cases of the module's docstring (bf16, the GGUF quantizers)."""
    w = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    M = float(np.abs(w).max())
    qw = quant.quantize_int8(w)
    deq = quant.int8_values(qw.q, qw.d)
    d = float(qw.d[0])
    err = float(np.abs(w.astype(np.float64) - deq).max())
    head = slice(0, 6)
    lines = [
        "## A worked example, computed",
        "",
        "Not from the article: one block of 32 weights drawn from a standard normal (NumPy's "
        "`default_rng(0)`), quantized by `numformer.ops.quant` when this site was built.",
        "",
        "### int8 (Q8_0's layout, a float32 scale)",
        "",
        "| quantity | numformer computes |", "|---|---|",
        f"| $W$, its first six of 32 values | {_math_cell(w[head], 6)} |",
        f"| $d = \\max_j \\lvert W_j \\rvert / 127$ | ${_cell(d, None)}$ (from $\\max\\lvert W\\rvert$ = ${M:.6f}$) |",
        f"| $q = \\operatorname{{round}}(W/d)$, the first six | {_math_cell(qw.q[head])} |",
        f"| $d \\cdot q$, the first six | {_math_cell(deq[head], 6)} |",
        f"| the largest $\\lvert W_j - d\\,q_j \\rvert$ of the block | ${_cell(err, None)}$ |",
        f"| the bound $\\frac{{d}}{{2}}(1 + 2^{{-16}})$ | ${_cell(d / 2 * (1 + 2.0 ** -16), None)}$ |",
        "",
        "### bf16",
        "",
        "| $W$ | bits | $\\operatorname{deq}$ | relative error | bound $2^{-8}$ |", "|---:|---:|---:|---:|---:|",
    ]
    for x in np.array([1 / 3, np.pi, 1e-3, 65504.0, -2.718281828], dtype=np.float32):
        bits = quant.bf16_bits(np.array([x]))[0]
        v = float(quant.bf16_values(np.array([bits]))[0])
        lines.append(f"| {float(x)!r} | `0x{int(bits):04X}` | {v!r} | {abs(v - float(x)) / abs(float(x)):.2e} | "
                     f"{2.0 ** -8:.2e} |")
    lines += [
        "",
        "### GGUF's block formats, on the same block",
        "",
        "`block_quantize` writes the block as llama.cpp's reference quantizers do, `block_dequantize` reads "
        "it back; the bounds are the docstring's below, before the float16 rounding of $d$ (and $m$), "
        "which adds about $2^{-11} M$.",
        "",
        "| format | bytes a block | largest $\\lvert x_i - \\hat{x}_i \\rvert$ | the bound |", "|---|---:|---:|---|",
    ]
    bounds = {"Q8_0": (M / 254, "$M/254$"), "Q4_0": (M / 8, "$M/8$"),
              "Q4_1": ((float(w.max()) - float(w.min())) / 30, "$d/2 = (\\max x - \\min x)/30$")}
    for fmt in quant.QUANTIZERS:
        raw = quant.block_quantize(w, fmt)
        back = quant.block_dequantize(raw, fmt)
        e = float(np.abs(w.astype(np.float64) - back).max())
        bound, text = bounds[fmt]
        lines.append(f"| {fmt} | {raw.size} | {e:.6f} | {text} = {bound:.6f} |")
    lines += [
        "",
        "### The other worst cases as the docstring states them",
        "",
        "```text",
        *docstring_section(quant, "bf16 (bfloat16)"),
        "",
        *docstring_section(quant, "The error of quantizing"),
        "```",
        "",
        "The formulas of every block format numformer reads (Q5_0, Q5_1 and the K-quants too), from the "
        "module's docstring:",
        "",
        "```text",
        *docstring_section(quant, "Formats with 32 values a block"),
        "",
        *docstring_section(quant, "K-quants, 256 values"),
        "```",
        "",
        _quant_checks(),
    ]
    return "\n".join(lines)


def _quant_checks() -> str:
    rows = []
    for c in QUANT_CASES:
        products = ", ".join(map(str, c.products)) if c.products else "—"
        torch = "yes" if c.format == "bf16" and c.torch else "—"
        rows.append(f"| {c.id} | {c.format} | {_shape(c.weight)} | {products} | {torch} |")
    return "\n".join([
        "## How it is checked",
        "",
        f"Quantizing has no gradient, so its {len(QUANT_CASES)} rows of the op table "
        "(`numformer.ops.table.QUANT_CASES`) are checked by `numformer.ops.harness.quant_checks`: against an "
        "exact computation in rational arithmetic (Python's fractions, no NumPy), against the worst-case bound "
        "above, for bf16 against PyTorch's own conversion, and, where the row gives row counts, the linear map "
        "with the quantized weight, $y = x\\,\\operatorname{deq}(W)^\\top + b$ and its $dx$, on both op sets "
        "against float64.",
        "",
        "| row | format | weight | rows of x for the linear map | against PyTorch |", "|---|---|---|---|---|",
        *rows,
        "",
        "GGUF's block formats are held bit for bit to the `gguf` package's own code "
        "(`tests/ops/test_quant_blocks.py`): its dequantization of every format numformer reads, on blocks its "
        "quantizers made and on random bytes, and its quantizers of Q8_0, Q4_0 and Q4_1. Run them with "
        "`numformer check` or `python -m pytest tests/ops -k quant`.",
    ])


BEYOND = {"lora": _lora_example, "erf": _erf_example, "quant": _quant_example}


# ---- how it is checked: the op table

def _shape(spec) -> str:
    if spec is None:
        return "None"
    if isinstance(spec, tuple):
        return "×".join(map(str, spec)) if spec else "scalar"
    if callable(spec):
        return "built by the row"
    return "×".join(map(str, np.shape(spec))) + " given"


def checks_section(op: str) -> str:
    cases = [c for c in CASES if c.op == op]
    rows = []
    for c in cases:
        shapes = ", ".join(f"{k} {_shape(v)}" for k, v in c.inputs.items())
        against = f"`numformer.reference.ops.{c.torch}`" if c.torch else "finite differences only"
        kw = ", ".join(f"{k}={v!r}" for k, v in c.kwargs.items()) or "—"
        rows.append(f"| {c.id} | {shapes} | {kw} | {against} | {', '.join(c.grads)} |")
    refs = sorted({c.torch for c in cases if c.torch})
    ref_code = [_code_block(f"numformer.reference.ops:{fn}") for fn in refs]
    fast = FAST_SIZES.get(op)
    fast_text = (f"`numformer.ops.fast.{op}` is held equal to this reference op on every row, in float32 and "
                 f"float64" + (f", at the block and chunk sizes {', '.join(str(s) for s in fast if s)}"
                               if any(fast) else "") + "."
                 if fast is not None else
                 f"The fast op set uses this reference op as it is (`numformer.ops.fast.{op}` is "
                 f"`numformer.ops.{op}`).")
    return "\n".join([
        "## How it is checked",
        "",
        f"The op table (`numformer.ops.table`) has {len(cases)} rows for `{op}`. One harness "
        "(`numformer.ops.harness`) runs each row on the reference ops and on the fast ones: forward and the "
        "gradients of $(y \\odot dy)$ summed against PyTorch autograd in float64 where a PyTorch reference is "
        "named, against central finite differences (no PyTorch needed), and float32 against float64.",
        "",
        "| row | inputs | options | forward and gradients against | gradients of |", "|---|---|---|---|---|",
        *rows,
        "",
        fast_text,
        "",
        "Run them with `numformer check` (every row, both op sets) or `python -m pytest tests/ops/test_table.py -k "
        f"\"{op}\"`." + (" The PyTorch reference, from `src/numformer/reference/ops.py`:" if refs else ""),
        "",
        *ref_code,
    ])
