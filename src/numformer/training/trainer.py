"""The training loop.

One iteration, as nanoGPT does it:

    lr        = cosine_lr(it)                       linear warmup, cosine decay to min_lr
    x, y      = get_batch(train)                    (B, T) random windows of the corpus
    for each micro-batch (gradient_accumulation_steps of them, B/N rows each):
        loss  = model.forward(x, y)                 the GPT, composed from numformer.ops
        grads += model.backward()                   every op's hand-derived backward, in reverse
    grads     = allreduce(grads)                    data-parallel ranks only (numformer.parallel.mpi)
    clip_grad_norm(grads, grad_clip)
    AdamW.step(params, grads, lr)                   one vectorised update over one flat buffer

Every `eval_interval` steps the mean loss over `eval_iters` batches of train and val is printed
(`step N: train loss X, val loss Y`), appended to out_dir/metrics.jsonl, and a checkpoint is
written to out_dir/latest (and out_dir/best when val loss improves). The checkpoint holds the
batch and dropout RNG states, so a resumed run continues bit-identically.

Schedule. lr_decay_iters 0 (the default) means max_iters: the cosine ends with the run. A run
resumed with a larger --max_iters then stretches its decay to the new end (the rate at the
resumed step is recomputed on the longer curve, so it rises a little, continuously thereafter);
an lr_decay_iters given explicitly is kept. A resumed run whose --max_iters is at or below the
checkpoint's step has nothing to train: it says so and exits 0 without writing anything.

Gradient accumulation. The global batch is drawn exactly as without it, then cut into
gradient_accumulation_steps micro-batches whose gradients are added into model.grads, each
scaled by its share of the batch: the step is the one-batch step up to float rounding (with
dropout, the masks are drawn per micro-batch and differ), and only one micro-batch's activations
are alive at a time.

Two notes, each said at most once a run, in one line: a fresh BPE run whose vocabulary came out
smaller than asked (BPE merges only within words, and a small corpus runs out of pairs), and
overfitting: val loss rising at each of the last two evaluations while more than OVERFIT_MARGIN
(10 %) above train loss (overfitting_note).

The run holds a lock on out_dir (numformer.checkpoint.lock_folder) from start to end, so a second
run on the same folder stops at once with one line naming the first; the checkpoint a resumed
run continues from is read under that lock. Nothing in out_dir that numformer did not write is
replaced or deleted (see numformer.training.metrics). Under MPI only rank 0 locks, reads and
writes; the other ranks get the settings and the checkpoint from it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from numformer.errors import NonFiniteLoss, NumformerError, UsageError
from numformer.parallel.threads import loss_and_grad
from numformer.training import finetune
from numformer.training.metrics import is_clipped, update_ratios
from numformer.training.config import TrainConfig, resolve
from numformer.training.metrics import append_metrics, is_our_metrics, is_our_plot, plot_losses


# Overfitting, as the note says it: val loss rose at each of the last two evaluations and is now
# more than OVERFIT_MARGIN (relative) above train loss. Two rises in a row, not one, because
# eval_iters batches give a noisy estimate; the margin, because train and val rising together
# is an unstable run (the learning rate), not one that learns its training text by heart.
OVERFIT_MARGIN = 0.10


class Trainer:
    """Holds one run: the model, its optimizer, the data and the RNG streams."""

    def __init__(self, cfg: TrainConfig, world, *, checkpoint=None, cache_dir=None, log=print):
        """checkpoint: a checkpoint (numformer.checkpoint.Checkpoint) to continue from; every
        rank must be given it (see run)."""
        import dataclasses

        from numformer.data import batches
        from numformer.data.corpus import open_corpus
        from numformer.model.gpt import GPT
        from numformer.optim import AdamW
        from numformer.parallel.process import cores, one_blas_thread, tune_malloc

        tune_malloc()
        self.cfg, self.world, self.log = cfg, world, log
        self.out_dir = Path(cfg.out_dir)
        self.latest, self.best = self.out_dir / "latest", self.out_dir / "best"
        # Under MPI only rank 0 reads the corpus and the token cache and sends what it got to the
        # other ranks (bcast; the identity for a single process): ranks never race on the cache,
        # BPE is trained once, and other hosts need neither corpus nor out_dir.
        ckpt = checkpoint
        # Refuse a model or batch too big for this machine before reading the corpus (with the
        # vocabulary at its smallest), and again with the tokenizer's own size.
        check_memory(cfg, vocab_size=cfg.vocab_size or (1024 if cfg.tokenizer == "bpe" else 1), ranks=world.size)

        def load_data():
            corpus = open_corpus(None if cfg.data == "shakespeare" else cfg.data)
            if ckpt is not None or init is not None:
                # the tokenizer travels inside the checkpoint; the corpus is re-encoded with it
                from numformer.data.tokenizer import from_json

                tok = from_json(ckpt.tokenizer if ckpt is not None else init["tokenizer"])
                return (*batches.prepare(corpus, tokenizer=tok, cache_dir=cache_dir), corpus.name)
            return (*batches.prepare(
                corpus, tokenizer=cfg.tokenizer, vocab_size=(cfg.vocab_size or None) if cfg.tokenizer == "bpe" else None,
                cache_dir=cache_dir), corpus.name)

        init = None        # --init_from: rank 0 reads the weights and tokenizer to start from (finetune.py)
        if ckpt is None and cfg.init_from:
            init = world.bcast(finetune.read_init(cfg) if world.is_main else None)
        data = world.bcast(load_data() if world.is_main else None)
        self.train_ids, self.val_ids, self.tokenizer, self.data_name = data
        batches.check_length(self.train_ids, self.val_ids, cfg.block_size)

        check_memory(cfg, vocab_size=self.tokenizer.vocab_size, ranks=world.size)
        mcfg = dataclasses.replace(cfg.model, vocab_size=self.tokenizer.vocab_size)
        if cfg.init_from:  # fine-tuning: the model's own config (its vocab_size, layer_norm_eps), the run's dropout
            mcfg = init["config"] if init is not None else finetune.checkpoint_model_config(ckpt, cfg.dropout)
        self.model = GPT(mcfg, dtype=np.dtype(cfg.dtype), seed=cfg.seed, ops="fast", lora=finetune.lora_config(cfg))
        if init is not None:
            self.model.params.flat[...] = init["params"]
        self.grad_health = []      # (step, gradient norm before clipping, clipped) since the last evaluation
        self.update_ratio = {}     # ‖Δθ‖/‖θ‖ per weight matrix, of the step before the last evaluation
        self.threads = cfg.threads or (cores() if world.size == 1 else 1)
        if self.threads == 1 and world.size == 1:
            one_blas_thread()   # one thread of work: BLAS threads would only wait on each other (parallel.process)
        self.opt = AdamW(self.model.trainable.flat, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                         weight_decay=cfg.weight_decay, decay_mask=self.model.decay_mask(), threads=self.threads)
        self.batch_rng = np.random.default_rng([cfg.seed, 0])
        self.iter_num = 0
        self.best_val = float("inf")
        if ckpt is not None:
            self._restore(ckpt)

    # -- checkpoints ---------------------------------------------------------------------------

    def _restore(self, ckpt) -> None:
        from numformer.errors import CheckpointError

        self.model.load_state_dict(ckpt.model, source=str(self.latest))
        st = ckpt.config["train"]
        try:
            if ckpt.optimizer is None:
                raise KeyError("optimizer.safetensors")
            for key in ("iter_num", "opt_step"):
                if type(st[key]) is not int or st[key] < 0:
                    raise ValueError(f"{key} must be an integer >= 0, found {st[key]!r}")
            self.opt.load_state_dict({"m": ckpt.optimizer["m"], "v": ckpt.optimizer["v"], "step": int(st["opt_step"])})
            self.iter_num = int(st["iter_num"])
            self.best_val = float(st["best_val_loss"])
            self.batch_rng.bit_generator.state = st["batch_rng"]
            self.model.rng.bit_generator.state = st["dropout_rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{self.latest}: incomplete training state ({e})") from None

    def train_state(self) -> dict:
        return {
            "config": self.cfg.to_flat(),
            "iter_num": self.iter_num,
            "opt_step": self.opt.step_count,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else 1e300,
            "batch_rng": self.batch_rng.bit_generator.state,
            "dropout_rng": self.model.rng.bit_generator.state,
            "world_size": self.world.size,
        }

    def save(self, path: Path) -> None:
        if not self.world.is_main:
            return
        st = self.opt.state_dict()
        try:
            self.model.save(path, tokenizer=self.tokenizer.to_json(), optimizer={"m": st["m"], "v": st["v"]},
                            train_state=self.train_state())
        except OSError as e:  # a full disk, a read-only folder: the previous checkpoint is still whole
            from numformer.errors import os_error_line

            kept = f"; the previous checkpoint in {path} is kept" if (path / "config.json").exists() else ""
            raise NumformerError(f"cannot save the checkpoint of step {self.iter_num} to {path} "
                                 f"({os_error_line(e)}){kept}") from None

    # -- one step ------------------------------------------------------------------------------

    def get_batch(self, ids, rng):
        """The global batch is drawn the same way on every rank; each rank keeps its slice."""
        from numformer.data.batches import get_batch

        x, y = get_batch(ids, self.cfg.block_size, self.cfg.batch_size, rng)
        lo, hi = shard(self.cfg.batch_size, self.world.rank, self.world.size)
        return x[lo:hi], y[lo:hi]

    def lr(self) -> float:
        """The learning rate of the step at iter_num (what step() uses and metrics.jsonl logs)."""
        from numformer.optim.schedule import cosine_lr

        cfg = self.cfg
        return cosine_lr(self.iter_num, cfg.learning_rate, cfg.warmup_iters, cfg.decay_iters, cfg.min_lr)

    def step(self) -> float:
        from numformer.optim.clip import clip_grad_norm

        cfg, model = self.cfg, self.model
        lr = self.lr()
        x, y = self.get_batch(self.train_ids, self.batch_rng)
        model.zero_grad()
        share = x.shape[0] / cfg.batch_size     # this rank's part of the global mean
        if self.world.size > 1 and cfg.dropout > 0:
            # each rank its own dropout masks (one shared stream would repeat them across ranks),
            # a function of (seed, step, rank) so that a resumed run draws the same ones
            model.rng = np.random.default_rng([cfg.seed, 1, self.iter_num, self.world.rank])
        if x.shape[0]:
            # each micro-batch's gradient is scaled by its part of the global mean
            losses = [(hi - lo, loss_and_grad(model, x[lo:hi], y[lo:hi], dloss=(hi - lo) / cfg.batch_size,
                                              threads=self.threads))
                      for lo, hi in micro_batches(x.shape[0], cfg.gradient_accumulation_steps)]
            loss = losses[0][1] if len(losses) == 1 else sum(n * part for n, part in losses) / x.shape[0]
            if self.world.size > 1 and not math.isfinite(loss):   # name the rank before the sum hides it
                raise NonFiniteLoss(f"loss became {loss} at step {self.iter_num} on rank {self.world.rank} "
                                    f"of {self.world.size}")
        else:
            loss = 0.0
        self.world.allreduce_sum(model.grads.flat)
        loss = self.world.allreduce_scalar(loss * share)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss} at step {self.iter_num}")
        # the global norm before clipping is kept for metrics.jsonl; a max_norm of inf clips nothing
        norm = clip_grad_norm(model.grads.flat, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not math.isfinite(norm):
            raise NonFiniteLoss(f"gradient norm became {norm} at step {self.iter_num}")
        if self.world.is_main:
            self.grad_health.append((self.iter_num, norm, is_clipped(norm, cfg.grad_clip)))
        evaluates_next = (self.iter_num + 1) % cfg.eval_interval == 0 or self.iter_num + 1 >= cfg.max_iters
        before = model.trainable.flat.copy() if evaluates_next and self.world.is_main else None
        self.opt.step(model.grads.flat, lr=lr)
        if before is not None:
            self.update_ratio = update_ratios(model.trainable.views, before, model.trainable.flat)
        self.iter_num += 1
        return loss

    def evaluate(self) -> dict:
        """Mean loss over eval_iters batches of each split, drawn from an RNG fixed by the step, so
        evaluating never changes the training batches."""
        self.model.eval()
        out = {}
        try:
            for split, ids in (("train", self.train_ids), ("val", self.val_ids)):
                rng = np.random.default_rng([self.cfg.seed, 2, self.iter_num])
                total = 0.0
                for _ in range(self.cfg.eval_iters):
                    x, y = self.get_batch(ids, rng)
                    loss = loss_and_grad(self.model, x, y, threads=self.threads, backward=False) if x.shape[0] else 0.0
                    total += loss * x.shape[0] / self.cfg.batch_size
                out[split] = self.world.allreduce_scalar(total) / self.cfg.eval_iters
        finally:
            self.model.train()
        return out


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
    from numformer.data.batches import DEFAULT_BPE_VOCAB_SIZE

    asked = cfg.vocab_size or DEFAULT_BPE_VOCAB_SIZE
    if cfg.tokenizer != "bpe" or got >= asked:
        return None
    what = f"--vocab_size {asked}" if cfg.vocab_size else f"the default vocab_size ({asked:,})"
    return (f"note: {what} asked for {asked:,} BPE tokens but this corpus gave {got:,}: BPE merges only within "
            f"words and ran out of pairs to merge; a larger corpus gives more")


def micro_batches(rows: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges cutting `rows` into at most n near-equal, non-empty micro-batches."""
    return [shard(rows, i, min(n, rows)) for i in range(min(n, rows))]


def check_memory(cfg: TrainConfig, *, vocab_size: int, ranks: int = 1) -> None:
    """MemoryLimitError (one line, with the estimate) if one process of this run would need more
    memory than the machine has available (numformer.model.memory)."""
    import dataclasses

    from numformer.model import memory

    mcfg = dataclasses.replace(cfg.model, vocab_size=max(1, vocab_size))
    parts = memory.training_estimate(mcfg, cfg.batch_size, np.dtype(cfg.dtype).itemsize, ranks=ranks,
                                     accumulation=cfg.gradient_accumulation_steps)
    memory.refuse_if_too_big("training this model", parts,
                             "use a smaller --n_layer, --n_embd, --batch_size or --block_size, "
                             "or a larger --gradient_accumulation_steps")


def shard(batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch that rank keeps: sizes differ by at most one when size
    does not divide batch_size (the first batch_size % size ranks get one more)."""
    base, extra = divmod(batch_size, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def run(settings, *, resume=False, overwrite=False, cache_dir=None, plot=True, world=None, out=None) -> dict:
    """Train. `settings` is a TrainConfig, or a dict of flat keys as flags and TOML files give
    them (see numformer.training.config.resolve; with resume=True the rest comes from the
    checkpoint). Returns a summary dict (final losses, timings)."""
    from numformer.checkpoint import lock_folder
    from numformer.parallel.mpi import init_world

    world = world or init_world()
    if not world.is_main:            # rank 0 resolves the settings under its lock and sends them
        cfg, ckpt, done = world.bcast(None)
        if done is not None:
            return done
        return _guarded_run(cfg, world, checkpoint=ckpt, overwrite=overwrite, cache_dir=cache_dir, plot=plot, out=out)
    given = settings.to_flat() if isinstance(settings, TrainConfig) else dict(settings)
    from numformer.errors import check_path

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
        from numformer.errors import os_error_line

        raise NumformerError(f"--out_dir {out_dir} cannot be used: {os_error_line(e)}") from None
    try:
        cfg, ckpt = resolve(given, resume=resume)
        if world.size > cfg.batch_size:
            raise UsageError(f"batch_size {cfg.batch_size} is smaller than the number of ranks ({world.size}): each "
                             f"rank needs at least one sequence of the global batch; use --batch_size {world.size} "
                             f"or more")
        done = _nothing_to_train(cfg, ckpt, out or sys.stdout)
        world.bcast((cfg, ckpt, done))
        if done is not None:
            return done
        return _guarded_run(cfg, world, checkpoint=ckpt, overwrite=overwrite, cache_dir=cache_dir, plot=plot, out=out)
    finally:
        lock.release()


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


def _guarded_run(cfg, world, **kw) -> dict:
    """_run, with an error of the machine's (a full disk, a read-only folder) as one line."""
    try:
        return _run(cfg, world, **kw)
    except OSError as e:
        from numformer.errors import os_error_line

        raise NumformerError(f"{os_error_line(e)} (checkpoints already in {cfg.out_dir} are kept)") from None


def _run(cfg: TrainConfig, world, *, checkpoint, overwrite, cache_dir, plot, out) -> dict:
    out = out or sys.stdout
    log = (lambda msg: print(msg, file=out, flush=True)) if world.is_main else (lambda msg: None)
    out_dir = Path(cfg.out_dir)
    if world.is_main and not cfg.eval_only:  # rank 0 holds the lock on out_dir: nothing can change under these checks
        if checkpoint is None and not overwrite and _holds_checkpoints(out_dir):
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
    tr = Trainer(cfg, world, checkpoint=checkpoint, cache_dir=cache_dir, log=log)
    resume = checkpoint is not None
    if world.is_main and not cfg.eval_only:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)   # ours: checked before the Trainer was built
    m = tr.model
    log(f"numformer train: {_data_description(tr.data_name)}, {len(tr.train_ids):,} train / {len(tr.val_ids):,} val tokens, "
        f"vocab {tr.tokenizer.vocab_size} ({cfg.tokenizer}); model {m.num_params():,} parameters "
        f"({cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size}, "
        f"{cfg.pos_encoding} positions)" + (f"; {world.size} ranks" if world.size > 1 else "")
        + (f"; resuming at step {tr.iter_num}" if resume else "") + f" [setup {time.perf_counter() - t_setup:.1f}s]")
    if not resume and not cfg.init_from:        # a resumed or fine-tuning run's tokenizer is not trained here
        note = bpe_vocabulary_note(cfg, tr.tokenizer.vocab_size)
        if note:
            log(note)
    if cfg.eval_only:
        losses = tr.evaluate()
        log(f"step {tr.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} (eval_only: nothing "
            f"written)")
        return {"interrupted": False, "step": tr.iter_num, "train_loss": losses["train"], "val_loss": losses["val"]}

    tokens_per_iter = cfg.batch_size * cfg.block_size
    bar = None
    if world.is_main:
        bar = ProgressBar(total=cfg.max_iters, initial=tr.iter_num, unit="it", dynamic_ncols=True, file=sys.stderr,
                          mininterval=0.5, smoothing=0.1)
    summary = {"interrupted": False}
    in_step = False               # True while a step runs: its state is then half-updated
    last_eval_iter = None
    history, overfit_said = [], False      # (step, train loss, val loss) of this process's evaluations
    t_train, iters_done = 0.0, 0
    try:
        while True:
            at_end = tr.iter_num >= cfg.max_iters
            if (tr.iter_num % cfg.eval_interval == 0 or at_end) and tr.iter_num != last_eval_iter:
                losses = tr.evaluate()
                last_eval_iter = tr.iter_num
                msg = f"step {tr.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                (bar.write(msg, file=out) if bar is not None else log(msg))
                summary.update(step=tr.iter_num, train_loss=losses["train"], val_loss=losses["val"])
                if world.is_main:
                    append_metrics(out_dir, tr, losses, iters_done / t_train * tokens_per_iter if t_train else None)
                improved = losses["val"] < tr.best_val
                if improved:
                    tr.best_val = losses["val"]
                history.append((tr.iter_num, losses["train"], losses["val"]))
                note = None if overfit_said else overfitting_note(history, tr.best, tr.best_val)
                if note:
                    overfit_said = True
                    (bar.write(note, file=out) if bar is not None else log(note))
                if tr.iter_num > 0 or not resume:
                    tr.save(tr.latest)
                    if improved:
                        tr.save(tr.best)
                world.barrier()
            if at_end:
                break
            t0 = time.perf_counter()
            in_step = True
            loss = tr.step()
            in_step = False
            dt = time.perf_counter() - t0
            t_train += dt
            iters_done += 1
            if bar is not None:
                bar.set_postfix_str(f"loss {loss:.4f}, {iters_done / t_train * tokens_per_iter:,.0f} tok/s", refresh=False)
                bar.update(1)
                if iters_done == 1:
                    bar.first_step_done()
                if cfg.log_interval and (tr.iter_num - 1) % cfg.log_interval == 0:   # as nanoGPT counts
                    bar.write(f"iter {tr.iter_num - 1}: loss {loss:.4f}, time {1000 * dt:.1f} ms", file=out)
            if world.stop_requested():   # Ctrl-C (seen by any rank): stop after this same step
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        summary["interrupted"] = True
        summary["step"] = tr.iter_num
        if in_step:               # the weights may be half-updated: keep the last checkpoint as it is
            log(f"interrupted during step {tr.iter_num}: nothing saved; {tr.latest} holds the last "
                f"checkpoint; continue with --resume")
            return summary
        tr.save(tr.latest)
        log(f"interrupted at step {tr.iter_num}: checkpoint saved to {tr.latest}; continue with --resume")
        return summary
    except NonFiniteLoss as e:
        raise NonFiniteLoss(f"{e}; stopped. The last good checkpoint is kept in {tr.latest}. "
                            f"Try a lower --learning_rate or a --grad_clip") from None
    finally:
        if bar is not None:
            bar.close()

    summary["tokens_per_sec"] = iters_done / t_train * tokens_per_iter if t_train else None
    summary["ms_per_iter"] = 1000 * t_train / iters_done if iters_done else None
    if world.is_main:
        if summary["ms_per_iter"]:
            log(f"trained {iters_done} steps in {t_train:.1f}s: {summary['ms_per_iter']:.1f} ms/iter, "
                f"{summary['tokens_per_sec']:,.0f} tokens/s; checkpoints in {tr.latest} and {tr.best}")
        if plot:
            png = plot_losses(out_dir)
            if png:
                log(f"loss curve: {png}")
            elif os.path.lexists(out_dir / "loss.png") and not is_our_plot(out_dir / "loss.png"):
                log(f"{out_dir / 'loss.png'} appeared during the run and is not numformer's: no plot written")
        if cfg.sample_tokens:
            log("sample:")
            log(_sample_text(tr, cfg.sample_tokens))
    return summary


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

