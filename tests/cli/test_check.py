"""`numformer check`: the table, the exit status, and that a broken backward is caught."""

import argparse
import subprocess
import sys

import pytest

import numformer.ops as ops
from numformer.commands import check
from numformer.ops.fast import dispatch
from numformer.ops.table import CASES

OPS = ["linear", "embedding", "attention", "mha", "layernorm", "gelu", "softmax", "cross_entropy",
       "dropout", "residual"]


def run_main(capsys, *argv):
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    rc = check.main(parser.parse_args(list(argv)))
    out = capsys.readouterr()
    return rc, out.out, out.err


def rows(out):
    """The report's first table: (row id, op set, cells...) of every row."""
    lines = out.splitlines()
    body = lines[2:lines.index("")]
    return [ln for ln in body if ln.strip()]


def test_check_passes_with_torch_and_covers_every_op_on_both_sets(capsys):
    rc, out, _ = run_main(capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["op", "(table", "row)", "ops"] and "torch" in lines[0]
    body = rows(out)
    assert len(body) == 2 * len(CASES) and all(ln.rstrip().endswith("OK") for ln in body)
    for op in OPS:
        assert any(ln.startswith(op) and " reference " in ln for ln in body), op
        assert any(ln.startswith(op) and " fast " in ln for ln in body), op
    mha = [ln.split() for ln in body if ln.startswith("mha causal")]
    assert len(mha) == 2 and all(r[-2] != "-" for r in mha)          # checked against torch
    fast = out.split("fast = reference")[1]
    for op in ("attention", "mha", "gelu"):                           # the ops whose fast version differs
        assert f"\n{op}" in fast
    report = out.split("which implementation each fast op runs here")[1].splitlines()[1:]
    assert report[:len(dispatch.report_lines())] == dispatch.report_lines()   # the dispatch table, as decided
    assert "comparisons OK" in lines[-1]


def test_rows_are_aligned(capsys):
    _, out, _ = run_main(capsys, "--no_torch", "--seed", "1")
    assert len({len(ln) for ln in rows(out)}) == 1                   # right-aligned last column


@pytest.mark.parametrize("flag", ["--no_torch", "--no-torch"])
def test_no_torch_flag_drops_the_torch_column(capsys, flag):
    rc, out, _ = run_main(capsys, flag)
    assert rc == 0
    assert "torch" not in out.splitlines()[0]
    assert "skipped" in out


def test_without_torch_installed_it_still_runs(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)         # `import torch` now raises ImportError
    rc, out, _ = run_main(capsys)
    assert rc == 0
    assert "not installed" in out and "torch" not in out.splitlines()[0]


@pytest.mark.parametrize("module, op, broken, rows_hit", [
    (ops, "gelu", lambda orig: lambda dy, cache: orig(-dy, cache), ("gelu",)),
    (ops, "layernorm", lambda orig: lambda dy, cache: tuple(None if g is None else g * (1 + 1e-4)
                                                            for g in orig(dy, cache)), ("layernorm",)),
    (ops.op_set("fast"), "attention", lambda orig: lambda dy, cache: tuple(g * (1 + 1e-4) for g in orig(dy, cache)),
     ("attention", "mha")),          # the fast mha runs the fast attention
])
def test_a_broken_backward_fails_the_check(capsys, monkeypatch, module, op, broken, rows_hit):
    """A broken reference op fails its own rows (and the fast rows that share or compare with
    it); a broken fast op fails its fast rows, which the GPT trains with."""
    target = getattr(module, op)
    monkeypatch.setattr(target, "backward", broken(target.backward))
    rc, out, err = run_main(capsys, "--no_torch")
    assert rc == 1
    failing = [ln for ln in out.splitlines() if ln.rstrip().endswith("FAIL")]
    assert failing and all(ln.startswith(rows_hit) for ln in failing)
    assert "FAIL" in err


def test_cli_exit_status_and_lazy_torch():
    r = subprocess.run([sys.executable, "-m", "numformer", "check", "--no-torch"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "comparisons OK" in r.stdout
    probe = "import sys, numformer.commands.check, numformer.ops.fast; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False"
