"""numformer.explain.source: every formula's home exists, and its derivation is read from the
docstring of the module that implements it."""

import types
from pathlib import Path

import pytest

from numformer.explain import LATER, NAMES
from numformer.explain.source import HOMES, docstring_section, home

ROOT = Path(__file__).resolve().parents[2]


def test_every_article_formula_has_a_home_in_the_article_order():
    article = [name for name, h in HOMES.items() if h.article]
    assert article == list(NAMES)
    assert [name for name, h in HOMES.items() if not h.article] == [*LATER, "lora", "erf", "quant"]


@pytest.mark.parametrize("name", list(HOMES))
def test_home_functions_file_and_derivation(name):
    h = home(name)
    assert (ROOT / h.path).is_file()
    for qualname in h.functions:
        obj = h.module
        for part in qualname.split("."):
            obj = getattr(obj, part)
        assert callable(obj), qualname
    lines = h.derivation()
    assert lines[0].startswith(h.heading) and len(lines) >= 2
    assert lines[-1].strip(), "no trailing blank line"
    assert any(line.startswith("    ") for line in lines), "the formulas under the heading"


def test_derivation_is_the_docstring_paragraph_and_the_block_under_it():
    m = types.ModuleType("m", "Title.\n\nBackward (dy):\ncontinued here\n    dx = dy\n\n    more = 1\nAfter, not in it.\n")
    assert docstring_section(m, "Backward") == ["Backward (dy):", "continued here", "    dx = dy", "",
                                                "    more = 1"]
    with pytest.raises(ValueError, match="no paragraph starting 'Forward'"):
        docstring_section(m, "Forward")
