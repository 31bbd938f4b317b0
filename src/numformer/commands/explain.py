"""`numformer explain [NAME ...] [--json]`: the article's worked examples, computed live.

For people, each formula gets a section: the formula, the article's inputs, then one row per
quantity with what the article prints, what numformer computes and whether they agree; the rows
that make up the result are marked ▶ and decide the verdict in the section's header. Then where
the formula lives in the source (module and functions) and its derived backward (an optimizer's
update rule), as the op's docstring states it. After the article's thirteen, under a heading that
says they are not in the article, come the formulas of today's large models (RoPE, RMSNorm,
SwiGLU, grouped-query attention), in the same layout with nothing printed to check ("NOT IN THE
ARTICLE"). A summary table closes the output. With --json: a JSON array, one object per formula,
with the keys name, formula, inputs, computed, article_printed (what the article prints; null for
the later formulas), agrees, note (a later formula's starts "Not in the article"), seed_printed
(the same as article_printed, under the key's first name), op (module, functions, path) and
derivation (derives: "backward" or "update", and the docstring's lines).
"""

import json
import os
import sys
import unicodedata

import numpy as np

from numformer.errors import UsageError
from numformer.explain import ALL_NAMES, NAMES
from numformer.explain.examples import explain, num
from numformer.explain.source import home

WIDTH = 98  # every line fits a 100-column terminal
INDENT = "   "
GAP = "  "


def add_arguments(parser) -> None:
    parser.add_argument(
        "names", nargs="*", metavar="NAME",
        help=f"formulas to show, by name or by number 1-{len(ALL_NAMES)}, in the order given (default: the "
             f"article's thirteen in its order, then {len(ALL_NAMES) - len(NAMES)} formulas not in the article): "
             + ", ".join(f"{i} {n}" for i, n in enumerate(ALL_NAMES, 1)),
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print a JSON array, one object per formula (name, formula, inputs, computed, "
             "article_printed, agrees, note, op, derivation; seed_printed is article_printed under "
             "its first name)",
    )


# What the article is, in one line of at most WIDTH columns (the first line of the text output)
ABOUT = "The article: a Chinese article on the math of Transformers, 13 formulas with worked examples."
# The heading above the later formulas
LATER_HEADING = "Not in the article: the formulas today's large models add (Llama, Mistral, Qwen2)"



def select(names: list[str]) -> list[str]:
    """Command-line names or numbers (1-17, as the output numbers them) -> formula names, in the
    order given, without repeats."""
    chosen = []
    for raw in names:
        name = raw.strip().lower().replace("-", "_")
        if name.isdigit() and 1 <= int(name) <= len(ALL_NAMES):
            name = ALL_NAMES[int(name) - 1]
        if name not in ALL_NAMES:
            raise UsageError(f"unknown formula {raw!r}; give a number 1-{len(ALL_NAMES)} or a name: "
                             f"{', '.join(ALL_NAMES)}")
        if name not in chosen:
            chosen.append(name)
    return chosen or list(ALL_NAMES)


def main(args) -> int:
    names = select(args.names)
    examples = explain(names)
    if args.json:
        print(json.dumps([to_json(ex) for ex in examples], indent=2, allow_nan=False))
        return 0
    _safe_stdout()
    style = _Style(_use_color(sys.stdout))
    out = [ABOUT, ""]
    headed = False
    for ex in examples:
        if not ex.in_article and not headed:        # the later formulas start here
            title = f"══ {LATER_HEADING} "
            out += [style.bold(title + "═" * max(3, WIDTH - _width(title))), ""]
            headed = True
        out += render(ex, style) + [""]
    if len(examples) > 1:
        out += summary(examples, style)
    print("\n".join(out).rstrip("\n"))
    return 0


def to_json(ex) -> dict:
    """The example's JSON object (Example.to_json), with where its op lives and its derivation."""
    h = home(ex.name)
    return {**ex.to_json(),
            "op": {"module": h.module_name, "functions": list(h.functions), "path": h.path},
            "derivation": {"derives": h.derives, "lines": h.derivation()}}


# ---------------------------------------------------------------------------------------------
# Verdicts and colour
# ---------------------------------------------------------------------------------------------


def _use_color(stream) -> bool:
    return (hasattr(stream, "isatty") and stream.isatty() and "NO_COLOR" not in os.environ
            and os.environ.get("TERM") != "dumb")


class _Style:
    def __init__(self, color: bool):
        self.color = color

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def good(self, text):
        return self._paint(text, "32")

    def bad(self, text):
        return self._paint(text, "1;31")

    def open(self, text):
        return self._paint(text, "33")

    def dim(self, text):
        return self._paint(text, "2")

    def bold(self, text):
        return self._paint(text, "1")


def verdict(ex, style: _Style, short: bool = False) -> str:
    """AGREES / DIFFERS by x / INCOMPLETE in the article -> computed / NOT IN THE ARTICLE -> computed."""
    if not ex.in_article:
        return style.dim("NOT IN THE ARTICLE" + ("" if short else " -> computed"))
    if ex.agrees is None:
        return style.open("INCOMPLETE in the article" + ("" if short else " -> computed"))
    if ex.agrees:
        return style.good("AGREES")
    return style.bad(f"DIFFERS by {num(ex.diff)}")


def check(step, style: _Style) -> str:
    """The check column of one row."""
    if step.printed is None:
        return style.open("not printed") if step.result else style.dim("not printed")
    if not step.agrees:
        return style.bad(f"DIFFERS by {num(step.diff)}")
    if step.printed.exact:
        return style.good("agrees")
    return style.good(f"agrees ({step.printed.decimals} decimals)")


# ---------------------------------------------------------------------------------------------
# Text layout
# ---------------------------------------------------------------------------------------------


def _width(text: str) -> int:
    """Columns on a terminal: CJK characters take two, combining marks and colour codes none."""
    n, i = 0, 0
    while i < len(text):
        if text[i] == "\x1b":  # skip a colour code: ESC [ ... m
            i = text.index("m", i) + 1
            continue
        ch = text[i]
        if not unicodedata.combining(ch):
            n += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        i += 1
    return n


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _cell(x: float, decimals: int | None) -> str:
    if decimals is None and 0 < abs(x) < 1e-4:  # eps = 1e-08, not 0.00000001
        s = np.format_float_scientific(float(x), trim="-")
    elif decimals is None:  # as the article writes it: 4.5, 0.0001, 2
        s = np.format_float_positional(float(x), trim="-")
    else:
        s = f"{float(x):.{decimals}f}"
    if s.startswith("-") and float(s) == 0.0:  # no "-0.0000"
        s = s[1:]
    return s


def block(value, decimals: int | None) -> list[str]:
    """A number, vector, matrix or stack of matrices as aligned lines of text."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        return [_cell(a, decimals)]
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim == 2:
        cells = [[_cell(x, decimals) for x in row] for row in a]
        w = max(len(c) for row in cells for c in row)
        return ["[" + " ".join(c.rjust(w) for c in row) + "]" for row in cells]
    return beside([block(m, decimals) for m in a], GAP)


def beside(blocks: list[list[str]], gap: str = GAP) -> list[str]:
    """Blocks of lines side by side, top-aligned."""
    height = max(len(b) for b in blocks)
    widths = [max(_width(line) for line in b) for b in blocks]
    lines = []
    for i in range(height):
        parts = [_pad(b[i] if i < len(b) else "", w) for b, w in zip(blocks, widths)]
        lines.append(gap.join(parts).rstrip())
    return lines


def _flow(blocks: list[list[str]], width: int, gap: str = "   ") -> list[str]:
    """Blocks left to right, starting a new band below when the line would get too wide."""
    bands, band, used = [], [], 0
    for b in blocks:
        w = max(_width(line) for line in b)
        if band and used + len(gap) + w > width:
            bands.append(band)
            band, used = [], 0
        used += (len(gap) if band else 0) + w
        band.append(b)
    if band:
        bands.append(band)
    lines = []
    for i, band in enumerate(bands):
        if i:
            lines.append("")
        lines += beside(band, gap)
    return lines


def _labelled(name: str, lines: list[str]) -> list[str]:
    head = f"{name} = "
    return [head + lines[0]] + [" " * _width(head) + line for line in lines[1:]]


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    """Greedy word wrap that counts terminal columns."""
    lines, line, empty = [], first, True
    for word in text.split():
        candidate = line + word if empty else line + " " + word
        if not empty and _width(candidate) > width:
            lines.append(line)
            candidate = rest + word
        line, empty = candidate, False
    lines.append(line)
    return lines


def _formula_lines(formula: str, width: int) -> list[str]:
    """The formula, broken only between its parts (",  " or ";  "), never inside one."""
    parts = [p for chunk in formula.split(";  ") for p in chunk.split(",  ")]
    lines, line = [], ""
    for part in parts:
        candidate = part if not line else line + ",  " + part
        if line and _width(INDENT + candidate) > width:
            lines.append(INDENT + line + ",")
            line = part
        else:
            line = candidate
    lines.append(INDENT + line)
    return lines


def render(ex, style: _Style | None = None) -> list[str]:
    """One formula's section, as lines."""
    style = style or _Style(False)
    title = f"── {ex.number}. {ex.name} · {ex.title_zh} "
    tail = " " + verdict(ex, style)
    rule = "─" * max(3, WIDTH - _width(title) - _width(tail))
    lines = [style.bold(title) + rule + tail]
    lines += _formula_lines(ex.formula, WIDTH)
    lines.append("")

    inputs = []
    for name, value in ex.inputs.items():
        shown = [str(value)] if isinstance(value, str) else block(value, None)
        inputs.append(_labelled(f"{name} (ours)" if name in ex.ours else name, shown))
    band = _flow(inputs, WIDTH - len(INDENT) - len("inputs  "))
    lines += [(INDENT + ("inputs  " if i == 0 else " " * 8) + line).rstrip()
              for i, line in enumerate(band)]
    lines.append("")
    lines += _step_table(ex, style)
    lines.append("")
    lines += _wrap(ex.note, WIDTH, INDENT + "note  ", INDENT + "      ")
    lines.append("")
    lines += source_lines(ex, style)
    return lines


def source_lines(ex, style: _Style) -> list[str]:
    """Where the formula lives (module, functions, file) and its derivation from the docstring."""
    h = home(ex.name)
    lines = _wrap(f"{h.where()}  ({h.path})", WIDTH, INDENT + "code  ", INDENT + "      ")
    what = ("update rule (an optimizer has no backward)" if h.derives == "update"
            else f"derived {h.derives}")
    lines.append(INDENT + style.dim(f"{what}, from the docstring of {h.module_name}:"))
    for line in h.derivation():  # the docstring's layout, its indented formulas 2 columns less deep
        body = line.lstrip(" ")
        lead = INDENT + " " * max(0, len(line) - len(body) - 2)
        if _width(lead + body) <= WIDTH:
            lines.append((lead + body).rstrip())
        else:  # too wide for a 100-column terminal: wrapped, never cut
            lines += _wrap(body, WIDTH, lead, lead + "    ")
    return lines


def _printed_block(step) -> list[str]:
    if step.printed is None:
        return ["—"]
    lines = block(step.printed.value, None if step.printed.exact else step.printed.decimals)
    sign = "= " if step.printed.exact else "≈ "
    return [sign + lines[0]] + ["  " + line for line in lines[1:]]


def _step_table(ex, style: _Style) -> list[str]:
    if not ex.in_article:
        return _later_table(ex, style)
    rows = [(s, s.label, _printed_block(s), block(s.computed, s.decimals), check(s, style))
            for s in ex.steps]
    head = ("quantity", "article prints", "numformer computes", "check")
    w_label = max([_width(head[0])] + [_width(r[1]) for r in rows])
    w_printed = max([_width(head[1])] + [_width(x) for r in rows for x in r[2]])
    w_comp = max([_width(head[2])] + [_width(x) for r in rows for x in r[3]])
    w_check = max(_width(r[4]) for r in rows)
    side_by_side = len(INDENT) + w_label + w_printed + w_comp + w_check + 3 * len(GAP) <= WIDTH

    def mark(step):
        return " ▶ " if step.result else INDENT

    lines = []
    if side_by_side:
        lines.append(style.dim(INDENT + GAP.join([_pad(head[0], w_label), _pad(head[1], w_printed),
                                                  _pad(head[2], w_comp), head[3]])))
        for step, label, printed, comp, chk in rows:
            for i in range(max(len(printed), len(comp))):
                cols = [
                    _pad(label if i == 0 else "", w_label),
                    _pad(printed[i] if i < len(printed) else "", w_printed),
                    _pad(comp[i] if i < len(comp) else "", w_comp),
                    chk if i == 0 else "",
                ]
                lines.append(((mark(step) if i == 0 else INDENT) + GAP.join(cols)).rstrip())
    else:  # too wide for one line: one row per line, stacked
        for step, label, printed, comp, chk in rows:
            lines.append(mark(step) + label + "   " + chk)
            lines += [INDENT + "    article prints  " + x for x in printed[:1]]
            lines += [INDENT + "                 " + x for x in printed[1:]]
            lines += [INDENT + "    numformer    " + x for x in comp[:1]]
            lines += [INDENT + "                 " + x for x in comp[1:]]
    return lines


def _later_table(ex, style: _Style) -> list[str]:
    """A later formula's rows: quantity and what numformer computes (the article prints nothing to
    check), side by side, or the computed value below its label when that is too wide."""
    rows = [(s, s.label, block(s.computed, s.decimals)) for s in ex.steps]
    head = ("quantity", "numformer computes")
    w_label = max([_width(head[0])] + [_width(r[1]) for r in rows])
    w_comp = max([_width(head[1])] + [_width(x) for r in rows for x in r[2]])
    mark = {True: " ▶ ", False: INDENT}
    if len(INDENT) + w_label + len(GAP) + w_comp <= WIDTH:
        lines = [style.dim(INDENT + _pad(head[0], w_label) + GAP + head[1])]
        for step, label, comp in rows:
            lines += [((mark[step.result] if i == 0 else INDENT) + _pad(label if i == 0 else "", w_label) + GAP
                       + line).rstrip() for i, line in enumerate(comp)]
        return lines
    lines = []
    for step, label, comp in rows:
        lines.append(mark[step.result] + label)
        lines += [INDENT + "    " + line for line in comp]
    return lines


def summary(examples, style: _Style) -> list[str]:
    """One row per formula: the article's result, numformer's, the verdict. A matrix takes a line
    per row; a value wider than its column is wrapped onto more lines, never cut short."""
    ours = [ex for ex in examples if ex.in_article]
    n_agree = sum(ex.agrees is True for ex in ours)
    n_differ = sum(ex.agrees is False for ex in ours)
    n_open = sum(ex.agrees is None for ex in ours)
    n_later = len(examples) - len(ours)
    later = f"{n_later} formula{'s' if n_later != 1 else ''} not in the article"
    title = (f"── summary: {len(ours)} formulas: {n_agree} agree, {n_differ} differ, "
             f"{n_open} incomplete in the article " if ours else f"── summary: {later} ")
    lines = [style.bold(title) + "─" * (WIDTH - _width(title))]
    if ours and n_later:
        lines.append(f"   and {later}, computed")
    head = ("#", "formula", "article prints", "numformer computes", "verdict")
    rows = []
    for ex in examples:
        first = ex.results[0]
        printed = ["—"] if first.printed is None else block(
            first.printed.value, None if first.printed.exact else first.printed.decimals)
        verdict_text = style.dim("NOT IN ARTICLE") if not ex.in_article else \
            style.open("INCOMPLETE") if ex.agrees is None else verdict(ex, style, short=True)
        rows.append(([str(ex.number)], [ex.name], printed, block(first.computed, min(first.decimals, 4)),
                     [verdict_text]))
    widths = [max(_width(x) for r in rows for x in r[i]) for i in range(5)]
    widths = [max(w, _width(h)) for w, h in zip(widths, head)]
    over = sum(widths) + len(GAP) * 4 - WIDTH
    for i in (3, 2, 1):  # too wide: the value columns give way, widest first, then the names
        if over > 0:
            cut = max(0, min(over, widths[i] - _width(head[i])))   # never narrower than its heading
            widths[i] -= cut
            over -= cut
    lines.append(style.dim(GAP.join(_pad(h, w) for h, w in zip(head, widths)).rstrip()))
    for row in rows:
        cells = [_fit(cell, w) for cell, w in zip(row, widths)]
        for i in range(max(len(c) for c in cells)):
            parts = [_pad(c[i] if i < len(c) else "", w) for c, w in zip(cells, widths)]
            lines.append(GAP.join(parts).rstrip())
    return lines


def _fit(cell: list[str], width: int) -> list[str]:
    """A cell's lines, each wider than `width` wrapped at its spaces (a name without one, as
    grouped_query_attention, after its underscores)."""
    out = []
    for line in cell:
        if _width(line) <= width:
            out.append(line)
        elif " " in line.strip():
            out += _wrap(line, width, "", " ")
        else:
            out += _name_lines(line, width)
    return out


def _name_lines(name: str, width: int) -> list[str]:
    """A name cut after its underscores into lines of at most `width` columns where it can be."""
    lines, line = [], ""
    for part in name.replace("_", "_\0").split("\0"):
        if line and _width(line + part) > width:
            lines.append(line)
            line = ""
        line += part
    return lines + [line]


def _safe_stdout() -> None:
    """Formulas use √, ᵀ, ⊙; on a terminal that cannot show them, print '?' rather than fail."""
    try:
        "√ᵀ⊙▶─≈".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(errors="replace")
