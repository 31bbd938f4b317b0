"""What a new user trips over, second pass (issue 24's command-line items): one way to name a
checkpoint, a first ETA that leaves out the compiling step, notes on a short BPE vocabulary and on
overfitting, hints for nanoGPT and Hugging Face habits, a FIFO as --prompt_file, paths that are
not UTF-8, `embed --file` and stdin, and public words without internal ones."""

import ast
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numformer import cli
from numformer.checkpoint import load_checkpoint

from .tiny import TINY, flags, make_lab

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("firststeps"))


def numformer(args, cwd, **kw):
    env = {**os.environ, "NUMFORMER_CACHE": str(Path(cwd) / "cache")}
    return subprocess.run([sys.executable, "-m", "numformer", *args], capture_output=True, cwd=cwd, env=env,
                          timeout=120, **kw)


def one_line(err: str, code=None, *words) -> str:
    """The one error line of a command's stderr, after checking there is exactly one."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def run_cli(capsys, *argv):
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------- 1. one way to name the checkpoint

SAMPLE = ("--max_new_tokens", "12", "--temperature", "0", "--prompt", "the ")


def test_sample_takes_the_checkpoint_as_a_positional_or_as_out_dir(lab, capsys):
    code, by_flag, err = run_cli(capsys, "sample", "--out_dir", lab / "run", *SAMPLE)
    assert code == 0, err
    code, by_position, err = run_cli(capsys, "sample", lab / "run", *SAMPLE)
    assert code == 0, err
    assert by_position == by_flag and by_flag.startswith("the ") and len(by_flag) > len("the \n")


def test_eval_takes_the_checkpoint_as_a_positional_or_as_out_dir(lab, capsys):
    data = ("--data", lab / "corpus.txt", "--json")
    code, by_position, err = run_cli(capsys, "eval", lab / "run", *data)
    assert code == 0, err
    code, by_flag, err = run_cli(capsys, "eval", "--out_dir", lab / "run", *data)
    assert code == 0, err
    assert json.loads(by_flag) == json.loads(by_position)
    assert json.loads(by_flag)["tokens"] > 1000


@pytest.mark.parametrize("command, rest", [("sample", SAMPLE), ("eval", ("--data", "corpus.txt"))])
def test_both_forms_naming_different_folders_is_one_usage_line(lab, tmp_path, capsys, command, rest):
    rest = [str(lab / r) if r == "corpus.txt" else r for r in rest]
    code, out, err = run_cli(capsys, command, lab / "run", "--out_dir", tmp_path / "other", *rest)
    assert code == 2 and out == ""
    line = one_line(err, 2, "--out_dir", "OUT_DIR_OR_CHECKPOINT", str(tmp_path / "other"), str(lab / "run"))
    assert line.startswith(f"numformer {command}: error:")
    # the same folder spelled twice is one folder
    code, out, err = run_cli(capsys, command, f"{lab / 'run'}/", "--out_dir", lab / "run", *rest)
    assert code == 0, err


def test_help_shows_both_forms():
    for name in ("sample", "eval"):
        text = cli.command_parser(name).format_help()
        assert "OUT_DIR_OR_CHECKPOINT" in text and "--out_dir" in text, name


# ------------------------------------------------------------- 2. the first ETA


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_the_eta_leaves_out_the_first_step(lab, tmp_path, capsys, monkeypatch):
    """A first step of an hour (compiling kernels) followed by steps of 0.6 s: tqdm's own estimate
    after step 2 is hours; numformer's says '?' after step 1, then at most 18 x 0.6 s."""
    import tqdm.std

    from numformer.training import run
    from numformer.training.trainer import Trainer

    clock = FakeClock()
    monkeypatch.setattr(tqdm.std, "time", clock)
    real_step = Trainer.step

    def step(self):
        loss = real_step(self)
        clock.t += 3600.0 if self.iter_num == 1 else 0.6
        return loss

    monkeypatch.setattr(Trainer, "step", step)
    capsys.readouterr()
    run(dict(TINY, max_iters=20, eval_interval=100, data=str(lab / "corpus.txt"), out_dir=str(tmp_path / "o")),
        cache_dir=lab / "cache", plot=False, out=io.StringIO())
    err = capsys.readouterr().err
    shown = re.findall(r"\b(\d+)/20 \[[\d:]+<([^,\]]+)", err)
    etas = {}
    for n, eta in shown:
        etas.setdefault(int(n), eta)
    assert etas.get(1) == "?", err
    later = {n: e for n, e in etas.items() if 2 <= n < 20}
    assert len(later) >= 5, err
    for n, eta in later.items():
        minutes, seconds = map(int, eta.split(":")[-2:])
        assert ":" in eta and eta.count(":") == 1 and 60 * minutes + seconds <= 11, (n, eta)
