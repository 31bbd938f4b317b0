"""The training loop: build the model and the optimizer, step, evaluate, save.

One iteration, as nanoGPT does it (Trainer.step):

    lr        = cosine_lr(it)                       linear warmup, cosine decay to min_lr
    x, y      = get_batch(train)                    (B, T) random windows of the corpus
    for each micro-batch (gradient_accumulation_steps of them):
        loss  = model.forward(x, y)                 the GPT or the Llama, composed from numformer.ops
        grads += model.backward()                   every op's hand-derived backward, in reverse
    clip_grad_norm(grads, grad_clip)
    AdamW.step(params, grads, lr)                   one vectorised update over one flat buffer

`train` runs it: every `eval_interval` steps and at the end it evaluates (the mean loss over
`eval_iters` batches of train and of val) and saves a checkpoint to out_dir/latest, and to
out_dir/best when val loss improved. The checkpoint holds the batch and dropout RNG states, so a
resumed run continues bit-identically. numformer.training.session is the run around this loop:
the out_dir and its lock, resuming, Ctrl-C, MPI, what is printed and recorded.

Where the gradient of a batch is computed. `ThisProcess` computes it here: on one thread the
model's forward and backward are called directly; with more threads, numformer.parallel.threads
splits each micro-batch's rows over them. A rank of a data-parallel MPI run computes it through
numformer.parallel.mpi.DataParallel, which answers the same two calls (`loss_and_grad`,
`mean_loss`): it gives its ThisProcess the rank's rows and sums the ranks' gradients.

Gradient accumulation. The batch is drawn exactly as without it, then cut into
gradient_accumulation_steps micro-batches whose gradients are added into model.grads, each
scaled by its share of the batch: the step is the one-batch step up to float rounding (with
dropout, the masks are drawn per micro-batch and differ), and only one micro-batch's activations
are alive at a time.

Schedule. lr_decay_iters 0 (the default) means max_iters: the cosine ends with the run. A run
resumed with a larger --max_iters then stretches its decay to the new end (the rate at the
resumed step is recomputed on the longer curve, so it rises a little, continuously thereafter);
an lr_decay_iters given explicitly is kept.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from numformer.data.batches import DEFAULT_BPE_VOCAB_SIZE, check_length, get_batch, prepare
from numformer.data.corpus import open_corpus
from numformer.data.tokenizer import from_json
from numformer.errors import CheckpointError, NonFiniteLoss, NumformerError, os_error_line
from numformer.model import memory
from numformer.model.decoders import build
from numformer.optim import AdamW
from numformer.optim.clip import clip_grad_norm
from numformer.optim.schedule import cosine_lr
from numformer.parallel import threads
from numformer.parallel.mpi import DataParallel, read_on_rank_0, shard
from numformer.parallel.process import cores, one_blas_thread, tune_malloc
from numformer.training.config import TrainConfig
from numformer.training.finetune import checkpoint_model_config, lora_config, read_init
from numformer.training.metrics import is_clipped, update_ratios


class Trainer:
    """One run: the data, the model, its optimizer and the RNG streams, at step iter_num.
    step() is one iteration (above), evaluate() the loss estimate, save() a checkpoint; train()
    runs them."""

    def __init__(self, cfg: TrainConfig, world=None, *, checkpoint=None, cache_dir=None):
        """world: the MPI world (numformer.parallel.mpi) of a data-parallel run; None, or a world
        of one process, for a process alone. checkpoint: a checkpoint (numformer.checkpoint) to
        continue from; under MPI every rank is given it (numformer.training.session)."""
        tune_malloc()
        self.cfg = cfg
        self.world = world if world is not None and world.size > 1 else None
        self.ranks = 1 if self.world is None else self.world.size
        self.is_main = self.world is None or self.world.is_main       # only the main process writes
        self.out_dir = Path(cfg.out_dir)
        self.latest, self.best = self.out_dir / "latest", self.out_dir / "best"
        self.resumed = checkpoint is not None

        # Refuse a model or batch too big for this machine before reading the corpus (with the
        # vocabulary at its smallest), and again with the tokenizer's own size.
        check_memory(cfg, vocab_size=cfg.vocab_size or (DEFAULT_BPE_VOCAB_SIZE if cfg.tokenizer == "bpe" else 1),
                     ranks=self.ranks)
        init = None        # --init_from: the weights and the tokenizer to start from (training/finetune.py)
        if checkpoint is None and cfg.init_from:
            init = read_on_rank_0(self.world, lambda: read_init(cfg))
        # the tokenizer of a resumed or fine-tuning run travels with its weights
        tokenizer = checkpoint.tokenizer if checkpoint is not None else init["tokenizer"] if init else None
        self.train_ids, self.val_ids, self.tokenizer, self.data_name = read_on_rank_0(
            self.world, lambda: read_data(cfg, tokenizer, cache_dir))
        check_length(self.train_ids, self.val_ids, cfg.model.block_size)
        check_memory(cfg, vocab_size=self.tokenizer.vocab_size, ranks=self.ranks)

        mcfg = dataclasses.replace(cfg.model, vocab_size=self.tokenizer.vocab_size)
        if cfg.init_from:  # fine-tuning: the model's own config (its vocab_size, norms' eps), the run's dropout
            mcfg = init["config"] if init else checkpoint_model_config(checkpoint, cfg.model.dropout)
        self.model = build(mcfg, dtype=np.dtype(cfg.dtype), seed=cfg.seed, ops="fast", lora=lora_config(cfg))   # GPT or Llama
        if init:
            self.model.params.flat[...] = init["params"]
        self.threads = cfg.threads or (cores() if self.ranks == 1 else 1)
        if self.threads == 1 and self.ranks == 1:
            one_blas_thread()   # one thread of work: BLAS threads would only wait on each other (parallel.process)
        self.opt = AdamW(self.model.trainable.flat, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                         weight_decay=cfg.weight_decay, decay_mask=self.model.decay_mask(), threads=self.threads)
        self.compute = ThisProcess(self.threads, cfg.gradient_accumulation_steps)
        if self.world is not None:
            self.compute = DataParallel(self.world, self.compute, seed=cfg.seed, dropout=cfg.model.dropout > 0)
        self.batch_rng = np.random.default_rng([cfg.seed, 0])
        self.iter_num = 0
        self.best_val = float("inf")
        self.in_step = False       # True from the start of a step until it has updated everything
        self.grad_health = []      # (step, gradient norm before clipping, clipped) since the last evaluation
        self.update_ratio = {}     # ‖Δθ‖/‖θ‖ per weight matrix, of the step before the last evaluation
        if checkpoint is not None:
            self._restore(checkpoint)

    # -- one step ------------------------------------------------------------------------------

    def lr(self) -> float:
        """The learning rate of the step at iter_num (what step() uses and metrics.jsonl logs)."""
        cfg = self.cfg
        return cosine_lr(self.iter_num, cfg.learning_rate, cfg.warmup_iters, cfg.decay_iters, cfg.min_lr)

    def step(self) -> float:
        """One optimizer step on the next training batch; returns the batch's mean loss."""
        cfg, model = self.cfg, self.model
        self.in_step = True
        lr = self.lr()
        x, y = get_batch(self.train_ids, cfg.model.block_size, cfg.batch_size, self.batch_rng)   # (B, T)
        model.zero_grad()
        loss = self.compute.loss_and_grad(model, x, y, step=self.iter_num)   # the gradient, in model.grads
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss} at step {self.iter_num}")
        # the global norm before clipping is kept for metrics.jsonl; a max_norm of inf clips nothing
        norm = clip_grad_norm(model.grads.flat, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not math.isfinite(norm):
            raise NonFiniteLoss(f"gradient norm became {norm} at step {self.iter_num}")
        if self.is_main:
            self.grad_health.append((self.iter_num, norm, is_clipped(norm, cfg.grad_clip)))
        evaluates_next = (self.iter_num + 1) % cfg.eval_interval == 0 or self.iter_num + 1 >= cfg.max_iters
        before = model.trainable.flat.copy() if evaluates_next and self.is_main else None
        self.opt.step(model.grads.flat, lr=lr)
        if before is not None:
            self.update_ratio = update_ratios(model.trainable.views, before, model.trainable.flat)
        self.iter_num += 1
        self.in_step = False
        return loss

    def evaluate(self) -> dict:
        """Mean loss over eval_iters batches of each split, drawn from an RNG fixed by the step, so
        evaluating never changes the training batches."""
        cfg = self.cfg
        self.model.eval()
        try:
            out = {}
            for split, ids in (("train", self.train_ids), ("val", self.val_ids)):
                rng = np.random.default_rng([cfg.seed, 2, self.iter_num])
                batches = (get_batch(ids, cfg.model.block_size, cfg.batch_size, rng) for _ in range(cfg.eval_iters))
                out[split] = self.compute.mean_loss(self.model, batches)
            return out
        finally:
            self.model.train()

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the checkpoint of this step to `path` (the main process writes; under MPI the
        other ranks wait until it is whole)."""
        if self.is_main:
            st = self.opt.state_dict()
            try:
                self.model.save(path, tokenizer=self.tokenizer.to_json(), optimizer={"m": st["m"], "v": st["v"]},
                                train_state=self.train_state())
            except OSError as e:  # a full disk, a read-only folder: the previous checkpoint is still whole
                kept = f"; the previous checkpoint in {path} is kept" if (path / "config.json").exists() else ""
                raise NumformerError(f"cannot save the checkpoint of step {self.iter_num} to {path} "
                                     f"({os_error_line(e)}){kept}") from None
        if self.world is not None:
            self.world.barrier()

    def train_state(self) -> dict:
        return {
            "config": self.cfg.to_flat(),
            "iter_num": self.iter_num,
            "opt_step": self.opt.step_count,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else 1e300,
            "batch_rng": self.batch_rng.bit_generator.state,
            "dropout_rng": self.model.rng.bit_generator.state,
            "world_size": self.ranks,
        }

    def _restore(self, ckpt) -> None:
        """Continue where the checkpoint's train_state() left off; CheckpointError naming it when
        that state is missing or malformed."""
        self.model.load_state_dict(ckpt.model, source=str(self.latest))
        st = ckpt.config["train"]
        where = f"{self.latest}: incomplete training state"
        missing = [key for key in ("iter_num", "opt_step", "best_val_loss", "batch_rng", "dropout_rng") if key not in st]
        if ckpt.optimizer is None:
            missing.append("optimizer.safetensors")
        else:
            missing += [f"{key} in optimizer.safetensors" for key in ("m", "v") if key not in ckpt.optimizer]
        if missing:
            raise CheckpointError(f"{where} (no {', '.join(missing)})")
        for key in ("iter_num", "opt_step"):
            if type(st[key]) is not int or st[key] < 0:
                raise CheckpointError(f"{where} ({key} must be an integer >= 0, found {st[key]!r})")
        if type(st["best_val_loss"]) not in (int, float):
            raise CheckpointError(f"{where} (best_val_loss must be a number, found {st['best_val_loss']!r})")
        try:
            self.opt.load_state_dict({"m": ckpt.optimizer["m"], "v": ckpt.optimizer["v"], "step": st["opt_step"]})
        except CheckpointError as e:
            raise CheckpointError(f"{self.latest / 'optimizer.safetensors'}: {e}") from None
        for rng, key in ((self.batch_rng, "batch_rng"), (self.model.rng, "dropout_rng")):
            try:
                rng.bit_generator.state = st[key]
            except (TypeError, ValueError) as e:      # NumPy's own check of the state read from the file
                raise CheckpointError(f"{where} ({key}: {e})") from None
        self.iter_num = st["iter_num"]
        self.best_val = float(st["best_val_loss"])


def train(tr: Trainer, progress) -> bool:
    """The loop: evaluate and save every eval_interval steps and at max_iters, a step in between.
    `progress` (numformer.training.session.Progress) shows and records each evaluation and step, and
    says when Ctrl-C asks to stop between two steps. Returns False if the loop stopped so, True
    at max_iters."""
    cfg = tr.cfg
    while True:
        at_end = tr.iter_num >= cfg.max_iters
        if tr.iter_num % cfg.eval_interval == 0 or at_end:
            losses = tr.evaluate()
            improved = losses["val"] < tr.best_val
            if improved:
                tr.best_val = losses["val"]
            progress.evaluated(tr, losses)
            if tr.iter_num > 0 or not tr.resumed:      # a resumed run has just read this checkpoint
                tr.save(tr.latest)
                if improved:
                    tr.save(tr.best)
        if at_end:
            return True
        t0 = time.perf_counter()
        loss = tr.step()
        progress.stepped(tr, loss, time.perf_counter() - t0)
        if progress.stop_requested():
            return False


class ThisProcess:
    """The loss and gradient of a batch, computed in this process: one micro-batch at a time
    (gradient accumulation), each on one thread directly or split over `threads` threads."""

    def __init__(self, threads: int, micro_batches: int):
        self.threads, self.micro_batches = threads, micro_batches

    def loss_and_grad(self, model, x, y, *, step=None, of=None) -> float:
        """Mean loss of the batch (x, y) (B, T); its gradient added into model.grads. Under MPI,
        (x, y) are a rank's rows of a batch of `of` rows and the gradient is scaled by their share
        of it. (step is used by MPI ranks only, numformer.parallel.mpi.)"""
        of = of or len(x)
        parts = []
        for lo, hi in micro_batches(len(x), self.micro_batches):
            dloss = (hi - lo) / of            # this micro-batch's part of the batch's mean
            if self.threads == 1:
                _, loss = model.forward(x[lo:hi], y[lo:hi])
                model.backward(dloss)
            else:
                loss = threads.loss_and_grad(model, x[lo:hi], y[lo:hi], dloss=dloss, threads=self.threads)
            parts.append((hi - lo, loss))
        return parts[0][1] if len(parts) == 1 else sum(n * loss for n, loss in parts) / len(x)

    def mean_loss(self, model, batches) -> float:
        """The mean over `batches` of each one's mean loss, with nothing kept for a backward."""
        total, n = 0.0, 0
        for x, y in batches:
            total += self.weighted_loss(model, x, y, of=len(x))
            n += 1
        return total / n

    def weighted_loss(self, model, x, y, *, of: int) -> float:
        """Mean loss of the rows (x, y) times their share of a batch of `of` rows (under MPI, a
        rank's share; all of it, a weight of 1, in a process alone)."""
        if not len(x):
            return 0.0
        if self.threads == 1:
            (_, loss), _ = model.forward_tape(x, y)          # the tape is dropped: nothing kept for a backward
        else:
            loss = threads.loss_and_grad(model, x, y, threads=self.threads, backward=False)
        return loss * len(x) / of


def read_data(cfg: TrainConfig, tokenizer_json, cache_dir):
    """(train ids, val ids, tokenizer, corpus name) of cfg.data, encoded with the tokenizer whose
    JSON a checkpoint or --init_from brings, or else with a new one of the kind cfg.tokenizer
    names (numformer.data.batches.prepare caches the ids)."""
    corpus = open_corpus(None if cfg.data == "shakespeare" else cfg.data)
    if tokenizer_json is not None:
        train_ids, val_ids, tokenizer = prepare(corpus, tokenizer=from_json(tokenizer_json), cache_dir=cache_dir)
    else:
        vocab_size = (cfg.vocab_size or None) if cfg.tokenizer == "bpe" else None
        train_ids, val_ids, tokenizer = prepare(corpus, tokenizer=cfg.tokenizer, vocab_size=vocab_size,
                                                cache_dir=cache_dir)
    return train_ids, val_ids, tokenizer, corpus.name


def micro_batches(rows: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges cutting `rows` into at most n near-equal, non-empty micro-batches."""
    return [shard(rows, i, min(n, rows)) for i in range(min(n, rows))]


def check_memory(cfg: TrainConfig, *, vocab_size: int, ranks: int = 1) -> None:
    """MemoryLimitError (one line, with the estimate) if one process of this run would need more
    memory than the machine has available (numformer.model.memory)."""
    mcfg = dataclasses.replace(cfg.model, vocab_size=max(1, vocab_size))
    parts = memory.training_estimate(mcfg, cfg.batch_size, np.dtype(cfg.dtype).itemsize, ranks=ranks,
                                     accumulation=cfg.gradient_accumulation_steps)
    memory.refuse_if_too_big("training this model", parts,
                             "use a smaller --n_layer, --n_embd, --batch_size or --block_size, "
                             "or a larger --gradient_accumulation_steps")
