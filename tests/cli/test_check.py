"""`numformer check`: the table, the exit status, and that a broken backward is caught."""

import argparse
import subprocess
import sys

import numpy as np
import pytest

from numformer import gradcheck, ops

OPS = ["linear", "embedding", "attention", "mha", "layernorm", "gelu", "softmax", "cross_entropy",
       "dropout", "residual"]


def run_main(capsys, *argv):
    parser = argparse.ArgumentParser()
    gradcheck.add_arguments(parser)
    rc = gradcheck.main(parser.parse_args(list(argv)))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_check_passes_with_torch_and_covers_every_op(capsys):
    rc, out, _ = run_main(capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["op", "tensor"] and "torch max rel err" in lines[0]
    rows = [ln for ln in lines[2:] if ln.strip() and not ln.startswith(("float64", "all "))]
    assert rows and all(ln.rstrip().endswith("OK") for ln in rows)
    for op in OPS:
        assert any(ln.startswith(op) for ln in rows), op
    # every differentiable tensor of mha is checked against torch, not left blank
    mha_rows = [ln.split() for ln in rows if ln.startswith("mha causal")]
    assert {r[2] for r in mha_rows} == {"y", "x", "w_qkv", "b_qkv", "w_o", "b_o"}
    assert all(r[-2] != "-" for r in mha_rows)
    assert "all" in lines[-1] and "OK" in lines[-1]


def test_rows_are_aligned(capsys):
    _, out, _ = run_main(capsys, "--no-torch", "--seed", "1")
    table = [ln for ln in out.splitlines()[:-3] if ln.strip()]
    ends = {len(ln) for ln in table}
    assert len(ends) == 1                                   # right-aligned last column


def test_no_torch_flag_drops_the_torch_columns(capsys):
    rc, out, _ = run_main(capsys, "--no-torch")
    assert rc == 0
    assert "torch" not in out.splitlines()[0]
    assert "skipped" in out


def test_without_torch_installed_it_still_runs(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)         # `import torch` now raises ImportError
    rc, out, _ = run_main(capsys)
    assert rc == 0
    assert "not installed" in out and "torch" not in out.splitlines()[0]


@pytest.mark.parametrize("op,broken", [
    ("gelu", lambda orig: lambda dy, cache: orig(-dy, cache)),
    ("layernorm", lambda orig: lambda dy, cache: tuple(None if g is None else g * (1 + 1e-4)
                                                       for g in orig(dy, cache))),
])
def test_a_broken_backward_fails_the_check(capsys, monkeypatch, op, broken):
    module = getattr(ops, op)
    monkeypatch.setattr(module, "backward", broken(module.backward))
    rc, out, err = run_main(capsys, "--no-torch")
    assert rc == 1
    failing = [ln for ln in out.splitlines() if ln.rstrip().endswith("FAIL")]
    assert failing and all(ln.startswith(op) for ln in failing)
    assert "FAIL" in err


def test_run_checks_returns_rows():
    rows, torch_version = gradcheck.run_checks(use_torch=False, seed=2)
    assert torch_version is None
    assert all(r.ok and r.torch_rel is None and r.fd_rel is not None for r in rows)
    assert all(r.fd_rel < 1e-6 for r in rows)
    assert not gradcheck.Row("x", "y", 1.0, 2e-6).ok
    assert not gradcheck.Row("x", "y", 0.0, 0.0, 1.0, np.nan).ok     # NaN never passes


def test_cli_exit_status_and_lazy_torch():
    r = subprocess.run([sys.executable, "-m", "numformer", "check", "--no-torch"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "all" in r.stdout and "checks OK" in r.stdout
    probe = "import sys, numformer.gradcheck, numformer.ops; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False"
