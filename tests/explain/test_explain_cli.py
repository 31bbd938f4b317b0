"""`numformer explain` as a user runs it: exit codes, the JSON schema, the terminal layout."""

import json
import re
import subprocess
import sys
import unicodedata

import pytest

from numformer.explain import ALL_NAMES, LATER, NAMES

KEYS = {"name", "formula", "inputs", "computed", "article_printed", "seed_printed", "agrees", "note", "op",
        "derivation"}
VERDICTS = {
    "linear": True, "positional_encoding": None, "attention": False,
    "multi_head_attention": None, "residual": True, "layernorm": True, "gelu": True,
    "softmax": True, "cross_entropy": True, "dropout": False, "backpropagation": None,
    "gradient_descent": True, "adam": False,
    # not in the article: nothing printed to agree with
    "rope": None, "rmsnorm": None, "swiglu": None, "grouped_query_attention": None,
}


def run(*args):
    return subprocess.run([sys.executable, "-m", "numformer", "explain", *args],
                          capture_output=True, text=True, encoding="utf-8", timeout=120)


@pytest.fixture(scope="module")
def text_all():
    r = run()
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def json_all():
    r = run("--json")
    assert r.returncode == 0, r.stderr

    def no_constants(name):
        raise AssertionError(f"JSON contains {name}")

    return json.loads(r.stdout, parse_constant=no_constants)


def columns(line):
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in line)


def leaves(value):
    if isinstance(value, list):
        for v in value:
            yield from leaves(v)
    else:
        yield value


def test_json_schema(json_all):
    """The article's thirteen, then the later four, every object with the same keys."""
    assert isinstance(json_all, list)
    assert [obj["name"] for obj in json_all] == list(NAMES) + list(LATER)
    for obj in json_all:
        assert set(obj) == KEYS, obj["name"]
        assert isinstance(obj["formula"], str) and obj["formula"]
        assert isinstance(obj["note"], str) and obj["note"]
        assert obj["agrees"] is VERDICTS[obj["name"]], obj["name"]
        assert isinstance(obj["inputs"], dict) and obj["inputs"]
        assert isinstance(obj["computed"], dict) and obj["computed"]
        assert obj["seed_printed"] is None or isinstance(obj["seed_printed"], dict)
        printed = obj["seed_printed"] or {}
        assert set(printed) <= set(obj["computed"])
        for group in (obj["inputs"], obj["computed"], printed):
            for key, value in group.items():
                if isinstance(value, list):  # arrays: nested lists of floats
                    assert all(type(x) is float for x in leaves(value)), (obj["name"], key)
                else:
                    assert type(value) in (float, int), (obj["name"], key)
        if obj["agrees"] is None:
            assert obj["seed_printed"] is None or len(printed) < len(obj["computed"])
        if obj["name"] in LATER:
            assert obj["article_printed"] is None and obj["note"].startswith("Not in the article: ")
        else:
            assert "Not in the article" not in obj["note"]


def test_json_values(json_all):
    by_name = {obj["name"]: obj for obj in json_all}
    assert by_name["softmax"]["seed_printed"]["softmax"] == [0.090, 0.245, 0.665]
    assert by_name["cross_entropy"]["computed"]["loss"] == pytest.approx(0.35667494393873245)
    assert by_name["dropout"]["computed"]["y"] == [2.0, 0.0, 6.0]
    assert by_name["adam"]["computed"]["step"] == pytest.approx([0.001, -0.001], rel=1e-6)
    assert by_name["backpropagation"]["seed_printed"] is None


def test_json_selects_names_in_order():
    r = run("--json", "softmax", "gelu")
    assert r.returncode == 0, r.stderr
    assert [obj["name"] for obj in json.loads(r.stdout)] == ["softmax", "gelu"]


@pytest.mark.parametrize("args", [("nosuch",), ("softmax", "nosuch"), ("--json", "nosuch")])
def test_unknown_name_exits_2_with_one_line(args):
    r = run(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "nosuch" in lines[0]
    assert all(name in lines[0] for name in ALL_NAMES) and "1-17" in lines[0]
    assert "Traceback" not in r.stderr


def test_text_output_all(text_all):
    lines = text_all.splitlines()
    assert "\x1b[" not in text_all  # not a terminal: no colour codes
    assert max(columns(line) for line in lines) <= 100
    headers = [line for line in lines if line.startswith("── ") and "summary" not in line]
    assert [h.split()[2] for h in headers] == list(ALL_NAMES)
    # the later formulas come after the article's thirteen, under a heading that says so
    heading = next(i for i, line in enumerate(lines) if line.startswith("══ Not in the article"))
    assert lines.index(headers[12]) < heading < lines.index(headers[13])
    for header, name in zip(headers, ALL_NAMES):
        verdict = VERDICTS[name]
        if name in LATER:
            assert header.endswith("NOT IN THE ARTICLE -> computed"), header
        elif verdict is True:
            assert header.endswith("AGREES"), header
        elif verdict is False:
            assert "DIFFERS by" in header, header
        else:
            assert "INCOMPLETE in the article -> computed" in header, header
    summary = lines.index(next(line for line in lines if "── summary: " in line))
    assert "13 formulas: 7 agree, 3 differ, 3 incomplete in the article" in lines[summary]
    assert lines[summary + 1] == "   and 4 formulas not in the article, computed"


def test_text_shows_printed_and_computed_side_by_side(text_all):
    # attention: the article's rounded weights next to the true ones, and the differing output.
    line = next(l for l in text_all.splitlines() if "softmax(Q Kᵀ / √d_k)" in l and "≈" in l)
    assert "[0.5 0.5]" in line and "[0.3302 0.6698]" in line and "DIFFERS by 0.1698" in line
    line = next(l for l in text_all.splitlines() if l.startswith(" ▶ Attention(Q, K, V)"))
    assert "= [2 3]" in line and "[2.3395 3.3395]" in line


def test_selected_names_in_given_order():
    r = run("softmax", "gelu", "softmax")
    assert r.returncode == 0, r.stderr
    headers = [l for l in r.stdout.splitlines() if l.startswith("── ")]
    assert headers[0].startswith("── 8. softmax") and headers[1].startswith("── 7. gelu")
    assert "summary: 2 formulas" in headers[2]


def test_help_lists_names():
    r = run("--help")
    assert r.returncode == 0
    assert "multi_head_attention" in r.stdout and "--json" in r.stdout and "17 grouped_query_attention" in r.stdout


def test_later_formulas_by_number_and_their_rows():
    r = run("14", "15", "3")
    assert r.returncode == 0, r.stderr
    headers = [l for l in r.stdout.splitlines() if l.startswith("── ")]
    assert headers[0].startswith("── 14. rope · 旋转位置编码") and headers[1].startswith("── 15. rmsnorm")
    assert headers[2].startswith("── 3. attention")
    assert "1 formulas: 0 agree, 1 differ, 0 incomplete in the article" in headers[3]
    assert "   and 2 formulas not in the article, computed" in r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith(" ▶ RMSNorm(x)"))
    assert line.split()[-3:] == ["[0.462910", "0.925819", "1.388729]"]
    assert "article prints" not in r.stdout.split("── 3.")[0]   # no column of printed numbers for them


def test_narrow_layout_stacks_rows(monkeypatch):
    """When printed and computed do not fit side by side, each row is stacked, still within WIDTH."""
    from numformer.commands import explain as cli
    from numformer.explain.examples import explain

    monkeypatch.setattr(cli, "WIDTH", 60)
    lines = cli.render(explain(["attention"])[0])
    assert any(line.strip().startswith("article prints  = [2 3]") for line in lines)
    assert any(line.strip().startswith("numformer    [2.3395 3.3395]") for line in lines)
    assert not any("quantity" in line for line in lines)


def test_json_says_where_the_op_lives_and_its_derivation(json_all):
    by_name = {obj["name"]: obj for obj in json_all}
    att = by_name["attention"]
    assert att["op"] == {"module": "numformer.ops.attention", "functions": ["forward", "backward"],
                         "path": "src/numformer/ops/attention.py"}
    assert att["derivation"]["derives"] == "backward"
    assert att["derivation"]["lines"][0].startswith("Backward")
    assert any("dv = P̃ᵀ dy" in line for line in att["derivation"]["lines"])
    adam = by_name["adam"]
    assert adam["op"]["functions"] == ["Adam.step"] and adam["derivation"]["derives"] == "update"
    assert any("m̂_t = m_t / (1 − β1^t)" in line for line in adam["derivation"]["lines"])


def test_text_shows_the_code_and_the_derived_backward(text_all):
    lines = text_all.splitlines()
    at = lines.index("   code  numformer.ops.attention: forward, backward (src/numformer/ops/attention.py)")
    assert lines[at + 1] == "   derived backward, from the docstring of numformer.ops.attention:"
    assert lines[at + 2].startswith("   Backward (dy = ∂L/∂y)")
    assert any(line.strip().startswith("dq = dS k / √d_k") for line in lines[at:at + 20])
    assert "   code  numformer.optim.sgd: SGD.step (src/numformer/optim/sgd.py)" in lines
    assert sum(line.startswith("   code  ") for line in lines) == len(ALL_NAMES)


@pytest.mark.parametrize("width", [98, 80])
def test_summary_never_cuts_a_value_short(monkeypatch, width):
    from numformer.commands import explain as cli
    from numformer.explain.examples import explain
    monkeypatch.setattr(cli, "WIDTH", width)
    lines = cli.summary(explain(), cli._Style(False))
    assert all(columns(line) <= width for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text
    # every computed value's numbers are there in full, however the cell had to be wrapped
    for number in ("0.8415", "0.5403", "0.0100", "1.0000", "2.3395", "2.6605", "-1.2247", "-3.0000",
                   "-0.0010", "0.6652"):
        assert number in re.findall(r"-?\d+\.\d+", text), (number, text)
