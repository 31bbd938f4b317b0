"""A training session: `numformer train` around the loop (numformer.training.loop).

run() owns out_dir: it refuses paths a checkpoint cannot record, locks the folder
(numformer.checkpoint.lock_folder) from start to end, so that a second run on it stops at once
with one line naming the first, and reads the checkpoint a resumed run continues from under that
lock. Nothing in out_dir that numformer did not write is replaced or deleted: a fresh run refuses
a folder that holds a checkpoint (unless --overwrite), and a metrics.jsonl or loss.png that is
not numformer's (numformer.training.metrics). A resumed run whose --max_iters is at or below the
checkpoint's step has nothing to train: it says so and exits 0 without writing anything.

While the loop runs, Progress shows and records it: the progress bar (rank 0's), each
evaluation's line `step N: train loss X, val loss Y`, metrics.jsonl, the training loss every
log_interval steps, and two notes, each said at most once a run, in one line: a fresh BPE run
whose vocabulary came out smaller than asked (BPE merges only within words, and a small corpus
runs out of pairs), and overfitting (overfitting_note). At the end: the speed, loss.png and a
sample.

Ctrl-C. Inside the command's world.guard the first Ctrl-C only raises a flag (numformer.parallel
.mpi); the loop asks after every step, stops there, and the checkpoint of that step is saved. A
KeyboardInterrupt in the middle of a step (the second Ctrl-C) leaves the weights half-updated:
nothing is saved, and out_dir/latest keeps the last checkpoint.

MPI. Every rank runs the session; rank 0 alone resolves the settings, locks, reads and writes
out_dir, and sends the settings and the checkpoint to the other ranks, which print nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from numformer.checkpoint import lock_folder
from numformer.data.batches import DEFAULT_BPE_VOCAB_SIZE
from numformer.errors import DataError, NonFiniteLoss, NumformerError, UsageError, check_path, os_error_line
from numformer.model.config import describe
from numformer.parallel.mpi import init_world
from numformer.training.config import TrainConfig, resolve
from numformer.training.loop import Trainer, train
from numformer.training.metrics import append_metrics, is_our_metrics, is_our_plot, plot_losses

# Overfitting, as the note says it: val loss rose at each of the last two evaluations and is now
# more than OVERFIT_MARGIN (relative) above train loss. Two rises in a row, not one, because
# eval_iters batches give a noisy estimate; the margin, because train and val rising together
# is an unstable run (the learning rate), not one that learns its training text by heart.
OVERFIT_MARGIN = 0.10


def run(settings, *, resume=False, overwrite=False, cache_dir=None, plot=True, world=None, out=None) -> dict:
    """Train. `settings` is a TrainConfig, or a dict of flat keys as flags and TOML files give
    them (see numformer.training.config.resolve; with resume=True the rest comes from the
    checkpoint). Returns a summary dict (final losses, timings)."""
    world = world or init_world()
    out = out or sys.stdout
    if not world.is_main:            # rank 0 resolves the settings under its lock and sends them
        cfg, ckpt, done = world.bcast(None)
        return done or _session(cfg, ckpt, world, overwrite=overwrite, cache_dir=cache_dir, plot=plot, out=out)
    given = settings.to_flat() if isinstance(settings, TrainConfig) else dict(settings)
    for key in ("out_dir", "data", "init_from"):      # recorded in config.json: refused before anything is made
        if isinstance(given.get(key), str):
            check_path(given[key], f"--{key}")
    out_dir = str(given.get("out_dir", TrainConfig.out_dir))
    if not out_dir.strip():
        raise UsageError("out_dir is empty; give a folder (\".\" for the current one)")
    if cache_dir is not None and not str(cache_dir).strip():
        raise UsageError("cache_dir is empty; give a folder or leave it out")
    if os.path.lexists(out_dir) and not Path(out_dir).is_dir():
        raise UsageError(f"--out_dir {out_dir} exists and is not a folder")
    try:
        lock = lock_folder(Path(out_dir), "numformer train")
    except OSError as e:          # a read-only or otherwise unusable place for out_dir
        raise NumformerError(f"--out_dir {out_dir} cannot be used: {os_error_line(e)}") from None
    with lock:
        cfg, ckpt = resolve(given, resume=resume)
        if world.size > cfg.batch_size:
            raise UsageError(f"batch_size {cfg.batch_size} is smaller than the number of ranks ({world.size}): each "
                             f"rank needs at least one sequence of the global batch; use --batch_size {world.size} "
                             f"or more")
        done = _nothing_to_train(cfg, ckpt, out)
        world.bcast((cfg, ckpt, done))
        return done or _session(cfg, ckpt, world, overwrite=overwrite, cache_dir=cache_dir, plot=plot, out=out)


def _session(cfg: TrainConfig, ckpt, world, *, overwrite, cache_dir, plot, out) -> dict:
    """The session on one rank: set up, the loop, and what comes after it."""
    log = (lambda msg: print(msg, file=out, flush=True)) if world.is_main else (lambda msg: None)
    with _machine_errors(cfg.out_dir):
        tr = _start(cfg, ckpt, world, overwrite=overwrite, cache_dir=cache_dir, plot=plot, log=log)
        if cfg.eval_only:
            losses = tr.evaluate()
            log(f"step {tr.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} (eval_only: "
                f"nothing written)")
            return {"interrupted": False, "step": tr.iter_num, "train_loss": losses["train"], "val_loss": losses["val"]}
        progress = Progress(tr, world, out, log)
        try:
            finished = train(tr, progress)
        except KeyboardInterrupt:        # a second Ctrl-C, or one outside the command's guard
            finished = False
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e}; stopped. The last good checkpoint is kept in {tr.latest}. "
                                f"Try a lower --learning_rate or a --grad_clip") from None
        except DataError as e:           # the token cache cut short under the run: the checkpoints stand
            raise DataError(f"{e}; stopped. The last checkpoint is kept in {tr.latest}; continue with --resume") \
                from None
        finally:
            progress.close()
        summary = progress.summary
        if not finished:
            summary.update(interrupted=True, step=tr.iter_num)
            if tr.in_step:               # the weights may be half-updated: keep the last checkpoint as it is
                log(f"interrupted during step {tr.iter_num}: nothing saved; {tr.latest} holds the last "
                    f"checkpoint; continue with --resume")
            else:
                tr.save(tr.latest)
                log(f"interrupted at step {tr.iter_num}: checkpoint saved to {tr.latest}; continue with --resume")
            return summary
        summary.update(tokens_per_sec=progress.tokens_per_sec(),
                       ms_per_iter=1000 * progress.seconds / progress.steps if progress.steps else None)
        if world.is_main:
            _finish(tr, progress, plot, log)
        return summary


@contextlib.contextmanager
def _machine_errors(out_dir):
    """An error of the machine's (a full disk, a read-only folder) as one line."""
    try:
        yield
    except OSError as e:
        raise NumformerError(f"{os_error_line(e)} (checkpoints already in {out_dir} are kept)") from None


def _start(cfg: TrainConfig, ckpt, world, *, overwrite, cache_dir, plot, log) -> Trainer:
    """Check out_dir (rank 0, under its lock), build the Trainer, say what is being trained."""
    out_dir = Path(cfg.out_dir)
    if world.is_main and not cfg.eval_only:  # rank 0 holds the lock on out_dir: nothing can change under these checks
        if ckpt is None and not overwrite and _holds_checkpoints(out_dir):
            raise UsageError(f"{out_dir} already holds a checkpoint; use --resume to continue it, "
                             f"--overwrite to start afresh, or another --out_dir")
        metrics = out_dir / "metrics.jsonl"
        if os.path.lexists(metrics) and not is_our_metrics(metrics):
            raise UsageError(f"{metrics} exists and was not written by numformer train; move it or choose "
                             f"another --out_dir")
        png = out_dir / "loss.png"
        if plot and os.path.lexists(png) and not is_our_plot(png):
            raise UsageError(f"{png} exists and was not written by numformer train; move it, choose another "
                             f"--out_dir, or pass --no_plot")
    t_setup = time.perf_counter()
    tr = Trainer(cfg, world, checkpoint=ckpt, cache_dir=cache_dir)
    if world.is_main and not cfg.eval_only:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)   # ours: checked before the Trainer was built
    log(f"numformer train: {_data_description(tr.data_name)}, {len(tr.train_ids):,} train / {len(tr.val_ids):,} val "
        f"tokens, vocab {tr.tokenizer.vocab_size} ({cfg.tokenizer}); model {tr.model.num_params():,} parameters "
        f"({describe(tr.model.config)})" + (f"; {world.size} ranks" if world.size > 1 else "")
        + (f"; resuming at step {tr.iter_num}" if ckpt is not None else "")
        + f" [setup {time.perf_counter() - t_setup:.1f}s]")
    if ckpt is None and not cfg.init_from:        # a resumed or fine-tuning run's tokenizer is not trained here
        note = bpe_vocabulary_note(cfg, tr.tokenizer.vocab_size)
        if note:
            log(note)
    return tr


def _finish(tr: Trainer, progress: Progress, plot: bool, log) -> None:
    """Rank 0 after the last step: the speed, loss.png and a sample."""
    out_dir, summary = tr.out_dir, progress.summary
    if summary["ms_per_iter"]:
        log(f"trained {progress.steps} steps in {progress.seconds:.1f}s: {summary['ms_per_iter']:.1f} ms/iter, "
            f"{summary['tokens_per_sec']:,.0f} tokens/s; checkpoints in {tr.latest} and {tr.best}")
    if plot:
        png = plot_losses(out_dir)
        if png:
            log(f"loss curve: {png}")
        elif os.path.lexists(out_dir / "loss.png") and not is_our_plot(out_dir / "loss.png"):
            log(f"{out_dir / 'loss.png'} appeared during the run and is not numformer's: no plot written")
    if tr.cfg.sample_tokens:
        log("sample:")
        log(_sample_text(tr, tr.cfg.sample_tokens))


class ProgressBar(tqdm):
    """tqdm whose rate and ETA count only the steps after the first one this process runs: that
    step compiles the fast ops' kernels, and counted in, it made a default run's first ETA read two
    hours. Until the second step ends, rate and ETA show "?"; then they are the mean over the steps
    since the first (evaluations included, so the ETA includes them too)."""

    warm = None              # (time, n) when the first step ended

    def first_step_done(self) -> None:
        self.warm = (self._time(), self.n)

    @property
    def format_dict(self):
        d = super().format_dict
        t0, n0 = self.warm or (None, None)
        elapsed = self._time() - t0 if t0 is not None else 0.0
        d["rate"] = (self.n - n0) / elapsed if t0 is not None and self.n > n0 and elapsed > 0 else 0   # 0 shows "?"
        return d


class Progress:
    """What the session shows and records while the loop (numformer.training.loop.train) runs:
    rank 0's progress bar, the line of each evaluation, metrics.jsonl, the overfitting note, the
    training loss every log_interval steps; and the world's Ctrl-C flag, asked after every step."""

    def __init__(self, tr: Trainer, world, out, log):
        self.world, self.out, self.log = world, out, log
        self.tokens_per_iter = tr.cfg.batch_size * tr.cfg.model.block_size
        self.bar = None
        if world.is_main:
            self.bar = ProgressBar(total=tr.cfg.max_iters, initial=tr.iter_num, unit="it", dynamic_ncols=True,
                                   file=sys.stderr, mininterval=0.5, smoothing=0.1)
        self.summary = {"interrupted": False}
        self.history, self.overfit_said = [], False    # (step, train loss, val loss) of this session's evaluations
        self.seconds, self.steps = 0.0, 0              # in tr.step(), this session

    def say(self, line: str) -> None:
        (self.bar.write(line, file=self.out) if self.bar is not None else self.log(line))

    def tokens_per_sec(self):
        return self.steps / self.seconds * self.tokens_per_iter if self.seconds else None

    def evaluated(self, tr: Trainer, losses: dict) -> None:
        self.say(f"step {tr.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        self.summary.update(step=tr.iter_num, train_loss=losses["train"], val_loss=losses["val"])
        if self.world.is_main:
            append_metrics(tr.out_dir, tr, losses, self.tokens_per_sec())
        self.history.append((tr.iter_num, losses["train"], losses["val"]))
        note = None if self.overfit_said else overfitting_note(self.history, tr.best, tr.best_val)
        if note:
            self.overfit_said = True
            self.say(note)

    def stepped(self, tr: Trainer, loss: float, seconds: float) -> None:
        self.seconds += seconds
        self.steps += 1
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"loss {loss:.4f}, {self.tokens_per_sec():,.0f} tok/s", refresh=False)
        self.bar.update(1)
        if self.steps == 1:
            self.bar.first_step_done()
        if tr.cfg.log_interval and (tr.iter_num - 1) % tr.cfg.log_interval == 0:   # as nanoGPT counts
            self.bar.write(f"iter {tr.iter_num - 1}: loss {loss:.4f}, time {1000 * seconds:.1f} ms", file=self.out)

    def stop_requested(self) -> bool:
        """Ctrl-C (seen by any rank): stop after this same step."""
        return self.world.stop_requested()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def overfitting_note(history: list[tuple[int, float, float]], best: Path, best_val: float) -> str | None:
    """The note for a run whose evaluations so far, (step, train loss, val loss), show
    overfitting at the last one (see OVERFIT_MARGIN); None when they do not."""
    if len(history) < 3:
        return None
    (_, _, v0), (_, _, v1), (step, train, val) = history[-3:]
    if not (v0 < v1 < val and val > (1 + OVERFIT_MARGIN) * train):
        return None
    return (f"note: the model is overfitting: val loss rose at each of the last two evaluations "
            f"({v0:.2f} -> {v1:.2f} -> {val:.2f} at step {step}) and is {val / train - 1:.0%} above train loss "
            f"({train:.2f}); {best} keeps the checkpoint of lowest val loss ({best_val:.4f}); more text, --dropout "
            f"or a smaller model would help")


def bpe_vocabulary_note(cfg: TrainConfig, got: int) -> str | None:
    """The note for a fresh BPE run whose vocabulary came out smaller than asked; None otherwise."""
    asked = cfg.vocab_size or DEFAULT_BPE_VOCAB_SIZE
    if cfg.tokenizer != "bpe" or got >= asked:
        return None
    what = f"--vocab_size {asked}" if cfg.vocab_size else f"the default vocab_size ({asked:,})"
    return (f"note: {what} asked for {asked:,} BPE tokens but this corpus gave {got:,}: BPE merges only within "
            f"words and ran out of pairs to merge; a larger corpus gives more")


def _nothing_to_train(cfg: TrainConfig, ckpt, out):
    """A summary when a resumed run is already at or past --max_iters (it then says so and
    writes nothing, its checkpoint's max_iters included); None when there is training to do."""
    if ckpt is None or cfg.eval_only:
        return None
    step = ckpt.config["train"].get("iter_num")
    if type(step) is not int or cfg.max_iters > step:
        return None          # a bad step is reported when the Trainer restores the checkpoint
    print(f"nothing to train: {Path(cfg.out_dir) / 'latest'} is at step {step} and --max_iters is {cfg.max_iters}; "
          f"give a --max_iters above {step} to train further (nothing was changed)", file=out, flush=True)
    return {"interrupted": False, "nothing_to_train": True, "step": step}


def _data_description(name: str) -> str:
    """The corpus's name, and for a folder how many .txt files it was read from (the files
    numformer.data.corpus reads: the folder's own .txt files, not its subfolders')."""
    folder = Path(name)
    if name == "shakespeare" or not folder.is_dir():
        return name
    n = sum(1 for p in folder.iterdir() if p.suffix == ".txt" and p.is_file())
    return f"{name} ({n} .txt file{'s' if n != 1 else ''})"


def _holds_checkpoints(out_dir: Path) -> bool:
    """latest/ or best/, or one set aside by a save that was interrupted between its renames."""
    if any((out_dir / name / "config.json").exists() for name in ("latest", "best")):
        return True
    return out_dir.is_dir() and any(out_dir.glob(".latest.numformer-old-*")) or \
        out_dir.is_dir() and any(out_dir.glob(".best.numformer-old-*"))


def _sample_text(tr: Trainer, n: int) -> str:
    prompt = "\n"
    try:
        ids = tr.tokenizer.encode(prompt)
    except NumformerError:
        ids = np.array([0], dtype=np.int64)
    if len(ids) == 0:
        ids = np.array([0], dtype=np.int64)
    out = tr.model.generate(ids[None, :], n, temperature=0.8, top_k=200, rng=np.random.default_rng(tr.cfg.seed))
    return tr.tokenizer.decode(out[0]).strip("\n")
