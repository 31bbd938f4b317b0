"""The loop (numformer.training.loop): the learning-rate schedule each step uses, gradient
accumulation, one BLAS thread for a one-thread step, a hand-edited training state on resume, and a
disk that fills during a save. Moved from tests/cli, where they were written as a new user's
first steps (issue 15) and as the command line's one-line errors."""

import errno
import json
import os

import numpy as np
import pytest

from numformer import cli
from numformer.checkpoint import load_checkpoint
from numformer.training import TrainConfig, run
from numformer.training.loop import Trainer
from tests.helpers import assert_one_line, blas_after, run_numformer as numformer, TINY, flags, make_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("loop"))





def copy_run(lab, tmp_path):
    import shutil

    shutil.copytree(lab / "run", tmp_path / "run")
    return tmp_path / "run"


def rewrite_config(folder, change):
    """Edit a checkpoint's config.json as one written before config.json recorded the digest of
    its own settings (which would catch the edit before the value is looked at)."""
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    cfg["_numformer"].pop("config_sha256")
    change(cfg)
    file.write_text(json.dumps(cfg))


def _in_process_train(lab, tmp_path, capsys, extra=()):
    argv = ["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o", max_iters=10)),
            "--cache_dir", str(lab / "cache"), "--no_plot", *extra]
    code = cli.main(argv)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------- schedule, accumulation, BLAS threads


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


@pytest.mark.parametrize("threads, env, want", [(1, {}, "BLAS 1 0"), (1, {"OMP_NUM_THREADS": "3"}, "BLAS 3 0")])
def test_train_threads_1_gives_blas_one_thread_unless_told(lab, tmp_path, threads, env, want):
    args = ["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o", max_iters=2,
                                 threads=threads)), "--no_plot"]
    assert blas_after(args, tmp_path, env) == want


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


# ---------------------------------------------------------------------- a bad training state, a full disk


@pytest.mark.parametrize("key, value", [("iter_num", -5), ("iter_num", 2.5), ("opt_step", -1)])
def test_training_state_edited_to_a_bad_step(lab, tmp_path, key, value):
    out = copy_run(lab, tmp_path)
    rewrite_config(out / "latest", lambda c: c["train"].__setitem__(key, value))
    before = (out / "latest" / "config.json").read_bytes()
    r = numformer(["train", "--out_dir", str(out), "--resume", "--max_iters", "20", "--no_plot"], tmp_path)
    assert_one_line(r, key)
    assert (out / "latest" / "config.json").read_bytes() == before


def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(lab, tmp_path, capsys, monkeypatch):
    import numformer.checkpoint as checkpoint

    real = checkpoint._write_file
    saves = {"n": 0}

    def write(file, data):
        if file.name == "model.safetensors":
            saves["n"] += 1
            if saves["n"] == 3:        # step 0: latest and best; step 5: latest fails
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(file, data)

    monkeypatch.setattr(checkpoint, "_write_file", write)
    code, err = _in_process_train(lab, tmp_path, capsys)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("numformer train:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "previous checkpoint" in lines[0], lines[0]
    assert load_checkpoint(tmp_path / "o" / "latest").config["train"]["iter_num"] == 0
    assert not [p for p in (tmp_path / "o").iterdir() if ".numformer-tmp-" in p.name]
