"""The session around the loop (numformer.training.session): the first ETA and the progress bar,
the notes on a short BPE vocabulary and on overfitting, resuming with nothing to train, eval_only,
log_interval, the header's corpus, and the paths and flags it refuses in one line. Moved from
tests/cli, where they were written as a new user's first steps (issues 15 and 24) and as the
command line's one-line errors."""

import errno
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
from tests.helpers import assert_one_line, run_cli, run_numformer as numformer, stderr_line as one_line, TINY, flags, make_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("session"))






def _in_process_train(lab, tmp_path, capsys, extra=()):
    argv = ["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o", max_iters=10)),
            "--cache_dir", str(lab / "cache"), "--no_plot", *extra]
    code = cli.main(argv)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------- the progress bar and the notes


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
    from numformer.training.loop import Trainer

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


def test_a_bpe_vocabulary_smaller_than_asked_is_said_once(lab, tmp_path):
    from numformer.training import run

    out = io.StringIO()
    run(dict(TINY, max_iters=0, tokenizer="bpe", vocab_size=2048, data=str(lab / "corpus.txt"),
             out_dir=str(tmp_path / "o")), cache_dir=tmp_path / "cache", plot=False, out=out)
    vocab = int(re.search(r"vocab (\d+) \(bpe\)", out.getvalue()).group(1))
    assert 257 <= vocab < 2048
    notes = [line for line in out.getvalue().splitlines() if "2,048" in line or "2048" in line]
    assert len(notes) == 1, out.getvalue()
    assert notes[0].startswith("note:") and "--vocab_size" in notes[0] and f"{vocab:,}" in notes[0], notes[0]


def test_a_bpe_vocabulary_that_reaches_its_size_says_nothing(lab, tmp_path):
    from numformer.training import run

    out = io.StringIO()
    run(dict(TINY, max_iters=0, tokenizer="bpe", vocab_size=260, data=str(lab / "corpus.txt"),
             out_dir=str(tmp_path / "o")), cache_dir=tmp_path / "cache", plot=False, out=out)
    assert "vocab 260 (bpe)" in out.getvalue() and "note:" not in out.getvalue(), out.getvalue()


def _scripted_run(lab, tmp_path, monkeypatch, train, val):
    from numformer.training import run
    from numformer.training.loop import Trainer

    losses = iter(zip(train, val))

    def evaluate(self):
        t, v = next(losses)
        return {"train": t, "val": v}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    out = io.StringIO()
    run(dict(TINY, max_iters=5 * (len(train) - 1), data=str(lab / "corpus.txt"), out_dir=str(tmp_path / "o")),
        cache_dir=lab / "cache", plot=False, out=out)
    return out.getvalue()


def test_overfitting_is_said_once(lab, tmp_path, monkeypatch):
    text = _scripted_run(lab, tmp_path, monkeypatch,
                         train=[3.0, 2.5, 2.0, 1.8, 1.6, 1.5, 1.4],
                         val=[3.0, 2.5, 2.4, 2.5, 2.7, 2.9, 3.1])
    notes = [line for line in text.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "overfitting" in notes[0], text
    lines = text.splitlines()
    at = lines.index(notes[0])
    assert lines[at - 1].startswith("step 20:"), text          # said at the second rise in a row
    assert "2.40" in notes[0] and "2.70" in notes[0] and "1.60" in notes[0]


@pytest.mark.parametrize("train, val", [
    ([3.0, 2.5, 2.4, 2.5, 2.7, 2.9], [3.0, 2.5, 2.4, 2.5, 2.7, 2.9]),     # both rise: not overfitting
    ([3.0, 2.5, 2.0, 1.8, 1.6, 1.5], [3.0, 2.9, 2.8, 2.7, 2.6, 2.5]),     # far above, but falling
    ([3.0, 2.5, 2.0, 1.8, 1.6, 1.5], [3.0, 2.5, 2.6, 2.5, 2.6, 2.5]),     # rises, never twice in a row
])
def test_no_overfitting_note_otherwise(lab, tmp_path, monkeypatch, train, val):
    text = _scripted_run(lab, tmp_path, monkeypatch, train, val)
    assert not [line for line in text.splitlines() if line.startswith("note:")], text


@pytest.mark.parametrize("value, words", [("resume", ("--resume",)), ("scratch", ("left out",))])
def test_init_from_resume_or_scratch_says_what_numformer_does(lab, tmp_path, capsys, value, words):
    code, out, err = run_cli(capsys, "train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o")),
                             f"--init_from={value}", "--no_plot")
    assert code == 2
    line = one_line(err, code, *words)
    assert "nanoGPT" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--out_dir", "--data", "--init_from"])
def test_a_path_flag_of_train_that_is_not_utf8_is_refused_before_training(lab, tmp_path, capsys, flag):
    import shutil

    bad = str(tmp_path / "caf\udce9")                  # the byte 0xe9 as Python hands it over
    settings = dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o", max_iters=5)
    if flag == "--data":
        shutil.copy(lab / "corpus.txt", bad)
        settings["data"] = bad
    elif flag == "--out_dir":
        settings["out_dir"] = bad
    else:
        shutil.copytree(lab / "run" / "latest", bad)
        settings = dict(data=lab / "corpus.txt", out_dir=tmp_path / "o", max_iters=5, eval_interval=5,
                        eval_iters=1, sample_tokens=0, init_from=bad)
    code, out, err = run_cli(capsys, "train", *flags(settings), "--no_plot", "--cache_dir", lab / "cache")
    assert code == 2, err
    one_line(err, 2, flag, "UTF-8", "0xe9")
    assert out == ""                                    # nothing trained
    assert not (tmp_path / "o").exists()
    if flag == "--out_dir":
        assert not os.path.lexists(bad)


def test_a_cache_dir_that_is_not_utf8_works(lab, tmp_path):
    cache = os.fsencode(tmp_path) + b"/cach\xe9"
    argv = [a.encode() for a in ["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o",
                                                      max_iters=5)), "--no_plot", "--cache_dir"]] + [cache]
    r = subprocess.run([sys.executable.encode(), b"-m", b"numformer", *argv], capture_output=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    assert load_checkpoint(tmp_path / "o" / "latest").config["train"]["iter_num"] == 5
    assert any(name.endswith(b".bin") for name in os.listdir(cache))


# ---------------------------------------------------------------------- resume, eval_only, log_interval, the header


@pytest.mark.parametrize("max_iters", [10, 4])
def test_resume_at_or_below_the_current_step_has_nothing_to_train(lab, tmp_path, max_iters):
    import shutil

    shutil.copytree(lab / "run", tmp_path / "run")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    r = numformer(["train", "--out_dir", tmp_path / "run", "--resume", "--max_iters", max_iters], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "nothing to train" in r.stdout and "step 10" in r.stdout, r.stdout
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before          # the saved max_iters included


def test_eval_only_evaluates_and_writes_nothing(lab, tmp_path):
    import shutil

    shutil.copytree(lab / "run", tmp_path / "run")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    r = numformer(["train", "--out_dir", tmp_path / "run", "--resume", "--eval_only", "true"], tmp_path)
    assert r.returncode == 0, r.stderr
    want = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"step 10: train loss {want['train_loss']:.4f}, val loss {want['val_loss']:.4f}" in r.stdout, r.stdout
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before
    r = numformer(["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "fresh")),
                   "--eval_only", "true"], tmp_path)
    assert r.returncode == 0 and "step 0: train loss" in r.stdout, r.stderr
    assert not (tmp_path / "fresh").exists()


def test_log_interval_prints_the_training_loss(lab, tmp_path):
    r = numformer(["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o", max_iters=7,
                                        log_interval=3)), "--no_plot"], tmp_path)
    assert r.returncode == 0, r.stderr
    iters = [line.split(":")[0] for line in r.stdout.splitlines() if line.startswith("iter ")]
    assert iters == ["iter 0", "iter 3", "iter 6"], r.stdout
    r = numformer(["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "p", max_iters=7)),
                   "--no_plot"], tmp_path)
    assert "iter " not in r.stdout                    # off by default: the default run prints what it did


def test_a_folder_corpus_says_how_many_files_it_read(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        (notes / f"{i}.txt").write_text(" ".join(rng.choice(["a", "bb", "ccc"], size=3000)))
    (notes / "skip.md").write_text("not a txt file")
    r = numformer(["train", *flags(dict(TINY, data=notes, out_dir=tmp_path / "o", max_iters=1)), "--no_plot"],
                  tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"numformer train: {notes} (3 .txt files)," in r.stdout, r.stdout


# ---------------------------------------------------------------------- one-line errors


def test_seed_minus_one_in_train(lab, tmp_path):
    r = numformer(["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o")), "--seed", "-1"],
                  tmp_path)
    assert_one_line(r, "seed", "-1", code=2)
    assert not (tmp_path / "o").exists()


def test_read_only_out_dir(lab, tmp_path, capsys, monkeypatch):
    """Simulated: this suite may run as root, for whom chmod does not stop a write."""
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if self == tmp_path / "o":
            raise PermissionError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, err = _in_process_train(lab, tmp_path, capsys)
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "Read-only file system" in err and str(tmp_path / "o") in err, err
