"""A run's metrics.jsonl as explore and `train --resume` read it (numformer.training.metrics):
rows numformer did not write are skipped, never a traceback, and a file holding them is never
taken for numformer's (so never replaced or deleted)."""

import json
import os
import shutil
import subprocess
import sys

from numformer.training.metrics import is_our_metrics, read_metrics, scan_metrics

from .conftest import cli, tiny_model
from .test_page import embedded

GOOD = [{"step": 0, "train_loss": 4.0, "val_loss": 4.1, "lr": 0.0},
        {"step": 10, "train_loss": 3.0, "val_loss": 3.2, "lr": 1e-3}]
# what each bad line is, and a word of the reason given for skipping it
BAD = [(b'{"step": 5, "train_loss": ' + b"7" * 5000 + b', "val_loss": 1}', "digits"),   # over Python's 4,300
       (b'{"step": 6, "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested"),
       (b'{"step": 7, "train_loss": 2.0, "val_loss": "\xff\xfe"}', "UTF-8"),
       (b'{"step": 8, "train_loss": 2.0', "JSON"),
       (b'[1, 2, 3]', "object")]


def write_metrics(path, bad=BAD):
    lines = [json.dumps(GOOD[0]).encode()] + [line for line, _ in bad] + [json.dumps(GOOD[1]).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    return path


def test_bad_rows_are_skipped_and_named(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl")
    rows, skipped = scan_metrics(path)
    assert rows == GOOD
    assert len(skipped) == len(BAD)                              # the blank line is not a problem
    for (line, word), problem in zip(BAD, skipped, strict=True):
        assert problem.startswith(f"line {BAD.index((line, word)) + 2}: ") and word in problem, problem
    assert read_metrics(path) == GOOD


def test_a_file_with_rows_numformer_did_not_write_is_not_ours(tmp_path):
    """Each bad line makes a file numformer did not write (never a traceback); a FIFO is not waited on."""
    for k, (line, _) in enumerate(BAD):
        path = write_metrics(tmp_path / f"m{k}.jsonl", [(line, "")])
        assert is_our_metrics(path) is False, line[:40]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in GOOD), encoding="utf-8")
    assert is_our_metrics(good) is True
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    assert is_our_metrics(fifo) is False and read_metrics(fifo) == []


def test_explore_skips_bad_rows_with_a_note(tmp_path):
    run = tmp_path / "run"
    model = tiny_model()
    model.save(run / "best", tokenizer=model.tokenizer.to_json())
    metrics = write_metrics(run / "metrics.jsonl")
    r = cli(["explore", run, "--prompt", "R", "--out", tmp_path / "p.html"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(notes) == 1, r.stderr
    assert notes[0].startswith(f"numformer explore: note: {metrics}: skipped 5 of 7 rows") and "line 2:" in notes[0]
    assert [m["step"] for m in embedded((tmp_path / "p.html").read_text(encoding="utf-8"))["metrics"]] == [0, 10]
    # nothing readable at all: no training panel, and the note says so
    metrics.write_bytes(b"\n".join(line for line, _ in BAD))
    r = cli(["explore", run, "--prompt", "R", "--out", tmp_path / "p.html"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and "no row could be read; the page shows no training curves" in notes[0], r.stderr
    assert embedded((tmp_path / "p.html").read_text(encoding="utf-8"))["metrics"] is None


def test_train_resume_refuses_a_metrics_file_numformer_did_not_write(trained_run, tmp_path):
    """`numformer train --resume` read metrics.jsonl through is_our_metrics: a traceback on these
    lines. It is a file numformer did not write: one line, and the file is left as it is."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    env = dict(os.environ, NUMFORMER_CACHE=str(tmp_path / "cache"))
    for line, _ in BAD[:3]:
        metrics = run / "metrics.jsonl"
        before = (trained_run / "metrics.jsonl").read_bytes() + line + b"\n"
        metrics.write_bytes(before)
        r = subprocess.run([sys.executable, "-m", "numformer", "train", "--out_dir", str(run), "--resume",
                            "--max_iters", "31", "--no_plot"], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=300)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "metrics.jsonl exists and was not written by numformer train" in lines[0], r.stderr
        assert metrics.read_bytes() == before
