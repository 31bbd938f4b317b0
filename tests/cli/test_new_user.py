"""What a new user trips over, following the README top to bottom (issue 15's list, 1-10)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numformer import cli
from numformer.checkpoint import load_checkpoint
from numformer.training import TrainConfig, run

from numformer.training.loop import Trainer

from .tiny import TINY, flags, make_lab

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("newuser"))


def numformer(args, cwd, env=None):
    e = {**os.environ, "NUMFORMER_CACHE": str(Path(cwd) / "cache"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "numformer", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=300)


# ---------------------------------------------------------------------- 1. BLAS threads


BLAS_PROBE = """
import sys
from numformer import cli
from numformer.parallel.process import blas_thread_count, limit_blas_threads
assert limit_blas_threads(3) == 3 and blas_thread_count() == 3     # as if OpenBLAS had started 3
rc = cli.main(sys.argv[1:])
print("BLAS", blas_thread_count(), rc)
"""


def _blas_after(args, cwd, env):
    clean = {k: "" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    e = {**os.environ, **clean, "NUMFORMER_CACHE": str(Path(cwd) / "cache"), **env}
    r = subprocess.run([sys.executable, "-c", BLAS_PROBE, *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=e, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("env, want", [({}, "BLAS 1 0"), ({"OPENBLAS_NUM_THREADS": "3"}, "BLAS 3 0")])
def test_sample_gives_blas_one_thread_unless_told(lab, tmp_path, env, want):
    assert _blas_after(["sample", "--out_dir", lab / "run", "--max_new_tokens", "3"], tmp_path, env) == want


@pytest.mark.parametrize("threads, env, want", [(1, {}, "BLAS 1 0"), (1, {"OMP_NUM_THREADS": "3"}, "BLAS 3 0")])
def test_train_threads_1_gives_blas_one_thread_unless_told(lab, tmp_path, threads, env, want):
    args = ["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o", max_iters=2,
                                 threads=threads)), "--no_plot"]
    assert _blas_after(args, tmp_path, env) == want


# ---------------------------------------------------------------------- 2, 3. schedule and resume


def _lrs(cfg: TrainConfig, steps):
    from numformer.optim.schedule import cosine_lr

    return [cosine_lr(it, cfg.learning_rate, cfg.warmup_iters, cfg.decay_iters, cfg.min_lr) for it in steps]


def test_lr_decay_iters_defaults_to_max_iters():
    cfg = TrainConfig.of(max_iters=200, warmup_iters=10)
    assert cfg.lr_decay_iters == 0 and cfg.decay_iters == 200
    lrs = _lrs(cfg, [10, 105, 200])
    assert lrs[0] == pytest.approx(cfg.learning_rate)
    assert lrs[1] == pytest.approx((cfg.learning_rate + cfg.min_lr) / 2)     # half-way down the cosine
    assert lrs[2] == pytest.approx(cfg.min_lr)                                # and at min_lr at the end
    assert TrainConfig.of(max_iters=200, lr_decay_iters=5000).decay_iters == 5000   # an explicit value wins
    assert TrainConfig().decay_iters == 2000       # the default run's schedule is what it was


def test_the_default_run_keeps_its_numbers():
    """2000 steps, decay to 2000: the same rates as before the default changed (lr_decay_iters 2000)."""
    from numformer.optim.schedule import cosine_lr

    cfg = TrainConfig()
    for it in (0, 99, 100, 1000, 1999, 2000):
        assert cosine_lr(it, cfg.learning_rate, cfg.warmup_iters, cfg.decay_iters, cfg.min_lr) == \
            cosine_lr(it, 1e-3, 100, 2000, 1e-4)


def test_the_rate_actually_used_decays_over_a_short_run(lab, tmp_path, monkeypatch):
    from numformer.optim import AdamW

    seen = []
    real = AdamW.step

    def step(self, grads, lr=None):
        seen.append(lr)
        return real(self, grads, lr=lr)

    monkeypatch.setattr(AdamW, "step", step)
    run(dict(TINY, max_iters=20, data=str(lab / "corpus.txt"), out_dir=str(tmp_path / "o")),
        cache_dir=lab / "cache", plot=False, out=open(os.devnull, "w"))
    assert TrainConfig.min_lr <= seen[-1] < 0.2 * TrainConfig.learning_rate    # before: ~learning_rate throughout


def test_metrics_log_the_rate_the_step_uses(lab, tmp_path):
    """metrics.jsonl's lr at each evaluation is the schedule's rate at that step, with the decay
    ending at max_iters (written out here: warmup, then a half cosine from learning_rate to min_lr)."""
    import math

    out = tmp_path / "o"
    run(dict(TINY, max_iters=20, eval_interval=5, data=str(lab / "corpus.txt"), out_dir=str(out)),
        cache_dir=lab / "cache", plot=False, out=open(os.devnull, "w"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    hi, lo, W, D = TrainConfig.learning_rate, TrainConfig.min_lr, TINY["warmup_iters"], 20
    for r in rows:
        it = r["step"]
        want = hi * (it + 1) / (W + 1) if it < W else lo + 0.5 * (1 + math.cos(math.pi * (it - W) / (D - W))) * (hi - lo)
        assert r["lr"] == pytest.approx(want, rel=1e-12), r
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20]


def test_resume_with_a_larger_max_iters_stretches_the_schedule(lab, tmp_path):
    import shutil

    shutil.copytree(lab / "run", tmp_path / "run")
    r = numformer(["train", "--out_dir", tmp_path / "run", "--resume", "--max_iters", "40", "--no_plot"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = load_checkpoint(tmp_path / "run" / "latest").config["train"]
    assert saved["iter_num"] == 40 and saved["config"]["max_iters"] == 40
    cfg = TrainConfig.of(**saved["config"])
    assert cfg.decay_iters == 40 and _lrs(cfg, [40])[0] == pytest.approx(cfg.min_lr)


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


# ---------------------------------------------------------------------- 6. flag spellings


def _every_flag():
    for name in cli.COMMANDS:
        parser = cli.command_parser(name)
        for action in parser._actions:
            for opt in action.option_strings:
                if opt.startswith("--"):
                    yield name, parser, opt, action


def test_every_flag_is_listed_in_its_underscore_spelling_and_read_in_both():
    n = 0
    for name, parser, opt, action in _every_flag():
        assert "-" not in opt[2:], (name, opt)                # one documented spelling
        hyphen = "--" + opt[2:].replace("_", "-")
        assert parser._option_string_actions[cli.underscored(hyphen)] is action, (name, hyphen)
        n += "_" in opt
    assert n > 40, n


@pytest.mark.parametrize("argv, want", [
    (["--batch-size", "3", "--from-hf=a-b", "--", "--x-y"], ["--batch_size", "3", "--from_hf=a-b", "--", "--x-y"]),
    (["-h", "--no-torch", "some-text"], ["-h", "--no_torch", "some-text"]),
])
def test_normalise_flags(argv, want):
    assert cli.normalise_flags(argv) == want


def test_both_spellings_run(lab, tmp_path):
    for spelling in (["--max_new_tokens", "2", "--out_dir"], ["--max-new-tokens", "2", "--out-dir"]):
        r = numformer(["sample", *spelling, lab / "run", "--temperature", "0"], tmp_path)
        assert r.returncode == 0, r.stderr
    r = numformer(["check", "--no-torch", "--help"], tmp_path)
    assert r.returncode == 0 and "--no_torch" in r.stdout and "--no-torch" not in r.stdout
    r = numformer(["convert", "--help"], tmp_path)
    assert "--from_hf" in r.stdout and "--from-hf" not in r.stdout


# ---------------------------------------------------------------------- 7. the mpi4py hint


def test_missing_mpi4py_hint_names_the_clone_install(monkeypatch):
    import builtins

    from numformer.errors import UsageError
    from numformer.parallel import mpi

    real_import = builtins.__import__

    def no_mpi4py(name, *a, **kw):
        if name == "mpi4py" or name.startswith("mpi4py."):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(UsageError) as e:
        mpi.init_world()
    assert "pip install '.[mpi]'" in str(e.value) and "numformer[mpi]" not in str(e.value)


# ---------------------------------------------------------------------- 8. nanoGPT's flags


@pytest.mark.parametrize("gas", [2, 3, 4])
def test_gradient_accumulation_is_the_one_batch_step(lab, gas):
    """The same weights after 3 steps, up to float rounding, with the batch cut into micro-batches."""
    def trained(gas):
        cfg = TrainConfig.of(**dict(TINY, batch_size=6), max_iters=3, gradient_accumulation_steps=gas, dtype="float64",
                             threads=1, data=str(lab / "corpus.txt"), out_dir=str(lab / "unused"))
        tr = Trainer(cfg, __import__("numformer.parallel.mpi", fromlist=["x"]).SingleProcess(), cache_dir=lab / "cache")
        losses = [tr.step() for _ in range(3)]
        return tr.model.params.flat.copy(), losses

    want, want_losses = trained(1)
    got, got_losses = trained(gas)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-12)


def test_gradient_accumulation_flag_is_checked(lab, tmp_path):
    r = numformer(["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o")),
                   "--gradient_accumulation_steps", "5"], tmp_path)
    assert r.returncode == 2 and "gradient_accumulation_steps (5) must be at most batch_size (4)" in r.stderr


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


# ---------------------------------------------------------------------- 9. explain


def test_explain_accepts_numbers_and_says_what_the_article_is(tmp_path):
    by_number = numformer(["explain", "3", "12"], tmp_path)
    by_name = numformer(["explain", "attention", "gradient_descent"], tmp_path)
    assert by_number.returncode == 0 and by_number.stdout == by_name.stdout
    first = by_number.stdout.splitlines()[0]
    assert first.startswith("The article:") and "Chinese" in first and "13 formulas" in first
    assert "seed" not in by_number.stdout.lower()
    for bad in ("0", "14"):
        r = numformer(["explain", bad], tmp_path)
        assert r.returncode == 2 and "number 1-13" in r.stderr


def test_no_seed_wording_left_in_explain():
    import numformer.commands.explain as cmd
    import numformer.explain as pkg

    for file in [Path(cmd.__file__), *Path(pkg.__file__).parent.glob("*.py")]:
        text = file.read_text(encoding="utf-8")
        for phrase in ("seed document", "the seed's", "The seed's", "the seed ", "The seed "):
            assert phrase not in text, (file.name, phrase)


# ---------------------------------------------------------------------- 10. small things


def test_bare_numformer_is_a_usage_error(tmp_path):
    r = numformer([], tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "usage: numformer" in r.stderr


def test_bench_never_prints_a_question_mark_for_blas_threads(tmp_path, monkeypatch, capsys):
    import numformer.perf as perf

    real = perf.blas_info
    monkeypatch.setattr(perf, "blas_info", lambda: {**real(), "blas_threads": None, "blas": None})
    assert cli.main(["bench", "--n_layer", "1", "--n_head", "1", "--n_embd", "8", "--block_size", "8",
                     "--batch_size", "2", "--iters", "1", "--warmup", "0", "--no_floor", "--gemm_n", "0"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "machine" in line)
    assert "?" not in line and ("BLAS threads" in line), line


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
