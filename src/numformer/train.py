"""The training loop and the `numformer train` command.

One iteration, as nanoGPT does it:

    lr        = cosine_lr(it)                       linear warmup, cosine decay to min_lr
    x, y      = get_batch(train)                    (B, T) random windows of the corpus
    loss      = model.forward(x, y)                 the GPT, composed from numformer.ops
    grads     = model.backward()                    every op's hand-derived backward, in reverse
    grads     = allreduce(grads)                    data-parallel ranks only (numformer.mpi)
    clip_grad_norm(grads, grad_clip)
    AdamW.step(params, grads, lr)                   one vectorised update over one flat buffer

Every `eval_interval` steps the mean loss over `eval_iters` batches of train and val is printed
(`step N: train loss X, val loss Y`), appended to out_dir/metrics.jsonl, and a checkpoint is
written to out_dir/latest (and out_dir/best when val loss improves). The checkpoint holds the
batch and dropout RNG states, so `--resume` continues bit-identically.

The run holds a lock on out_dir (numformer.checkpoint.lock_folder) from start to end, so a second
run on the same folder stops at once with one line naming the first. Nothing in out_dir that
numformer did not write is replaced or deleted: metrics.jsonl must be numformer's metrics and
loss.png a plot that carries numformer's PNG text chunk (PNG_KEY), or the run refuses to start.
Under MPI only rank 0 locks, checks and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numformer.errors import NumformerError, UsageError
from numformer.parallel.threads import loss_and_grad


@dataclass
class TrainConfig:
    # data
    data: str = "shakespeare"
    tokenizer: str = "char"
    vocab_size: int = 0            # BPE only: the vocabulary size to train (0: 1024)
    # model (nanoGPT's CPU "baby GPT")
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = True
    pos_encoding: str = "sinusoidal"
    gelu: str = "tanh"
    # optimisation
    batch_size: int = 12
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # evaluation and output
    eval_interval: int = 250
    eval_iters: int = 20
    out_dir: str = "out"
    seed: int = 1337
    dtype: str = "float32"
    threads: int = 0               # threads for each step's shards and AdamW (0: one per core; 1 under MPI)
    sample_tokens: int = 300       # length of the sample printed at the end (0: none)


HELP = {
    "data": "'shakespeare' (built in), a UTF-8 text file, or a folder of .txt files",
    "tokenizer": "'char' or 'bpe' (byte-level BPE trained on the corpus)",
    "vocab_size": "vocabulary size for --tokenizer bpe (0 means 1024)",
    "n_layer": "number of Transformer blocks",
    "n_head": "attention heads per block",
    "n_embd": "embedding width C",
    "block_size": "context length T",
    "dropout": "dropout probability (0 disables it)",
    "bias": "biases in Linear and LayerNorm layers (true/false)",
    "pos_encoding": "'sinusoidal' (the seed's formula 2) or 'learned' (GPT-2)",
    "gelu": "'tanh' (GPT-2's approximation) or 'exact' (erf)",
    "batch_size": "sequences per step (the global batch under MPI)",
    "max_iters": "optimizer steps in total",
    "learning_rate": "peak learning rate",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_iters": "steps of linear warmup",
    "lr_decay_iters": "step at which the cosine decay reaches min_lr",
    "weight_decay": "AdamW decoupled weight decay (matrices and embeddings only)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the global gradient norm to this (0 disables clipping)",
    "eval_interval": "evaluate, log and checkpoint every this many steps",
    "eval_iters": "batches averaged for each evaluation",
    "out_dir": "folder for checkpoints (latest/, best/), metrics.jsonl and loss.png",
    "seed": "random seed for the initial weights, batches and dropout",
    "dtype": "'float32' or 'float64'",
    "threads": "split each batch, and the AdamW update, over this many threads (0: one per core, or 1 per MPI rank)",
    "sample_tokens": "length of the text sample printed at the end (0 for none)",
}

# The keys that fix the model and its data: a resumed run must keep them.
FIXED_ON_RESUME = ("data", "tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "block_size",
                   "bias", "pos_encoding", "gelu", "dtype")
CHOICES = {"tokenizer": ("char", "bpe"), "pos_encoding": ("sinusoidal", "learned"),
           "gelu": ("tanh", "exact"), "dtype": ("float32", "float64")}


# --------------------------------------------------------------------------------- configuration

def _fields():
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _check_type(key: str, value, source: str):
    """Return value as the field's type, or raise UsageError naming the key and source."""
    want = _fields()[key].type
    want = {"int": int, "float": float, "str": str, "bool": bool}[want] if isinstance(want, str) else want
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is bool and isinstance(value, bool) or want is not bool and type(value) is want:
        if key in CHOICES and value not in CHOICES[key]:
            raise UsageError(f"{source}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        return value
    raise UsageError(f"{source}: {key} must be {want.__name__}, got {type(value).__name__} {value!r}")


def load_toml(path: str) -> dict:
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: config file not found")
    try:
        with p.open("rb") as f:
            d = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: not valid TOML: {e}") from None
    fields = _fields()
    out = {}
    for key, value in d.items():
        if key not in fields:
            raise UsageError(f"{p}: unknown key {key!r} (valid keys: {', '.join(fields)})")
        out[key] = _check_type(key, value, str(p))
    return out


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="optional TOML file setting any of the flags below; flags given on the command line override it")
    fields = _fields()
    for name, f in fields.items():
        default = f.default
        conv = {"int": int, "float": float, "str": str, "bool": _bool_flag}[f.type if isinstance(f.type, str) else f.type.__name__]
        parser.add_argument(f"--{name}", type=conv, default=None, metavar=name.upper() if f.type != "bool" else "BOOL",
                            choices=CHOICES.get(name),
                            help=f"{HELP[name]} (default: {str(default).lower() if f.type == 'bool' else default})")
    parser.add_argument("--resume", action="store_true",
                        help="continue from out_dir/latest with its weights, optimizer state and RNG state")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if out_dir already holds a checkpoint (it is replaced at the first evaluation)")
    parser.add_argument("--cache_dir", default=None, help="token cache folder (default: $NUMFORMER_CACHE or ~/.cache/numformer)")
    parser.add_argument("--no_plot", action="store_true", help="do not write loss.png")


def _bool_flag(text: str) -> bool:
    import argparse

    try:
        return _parse_bool(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


def resolve_config(args) -> TrainConfig:
    """Defaults (with --resume: the resumed run's own settings), then the TOML file, then the
    flags given on the command line. A resumed run may change its schedule and evaluation, not
    its model or data (FIXED_ON_RESUME)."""
    given = {}
    if args.config:
        given.update(load_toml(args.config))
    for name in _fields():
        v = getattr(args, name, None)
        if v is not None:
            given[name] = v
    values = {}
    if getattr(args, "resume", False):
        latest = Path(given.get("out_dir", TrainConfig.out_dir)) / "latest"
        saved = saved_train_config(latest)
        for key in FIXED_ON_RESUME:
            if key in given and key in saved and given[key] != saved[key]:
                raise UsageError(f"--resume: {key} is {saved[key]!r} in {latest} but {given[key]!r} was given; "
                                 f"a resumed run keeps its model and data")
        values.update(saved)
    values.update(given)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def saved_train_config(latest: Path) -> dict:
    """The training settings stored in a checkpoint, type-checked (unknown keys are dropped)."""
    from numformer.checkpoint import load_checkpoint
    from numformer.errors import CheckpointError

    ckpt = load_checkpoint(latest)       # says where a checkpoint set aside by a crash is
    train = ckpt.config.get("train")
    saved = train.get("config") if isinstance(train, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{latest}: config.json has no training state to resume from")
    fields = _fields()
    return {k: _check_type(k, v, f"{latest}/config.json") for k, v in saved.items() if k in fields}


def validate(cfg: TrainConfig) -> None:
    positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "eval_interval", "eval_iters")
    for k in positive:
        if getattr(cfg, k) < 1:
            raise UsageError(f"{k} must be >= 1, got {getattr(cfg, k)}")
    for k in ("max_iters", "warmup_iters", "lr_decay_iters", "sample_tokens", "vocab_size", "threads"):
        if getattr(cfg, k) < 0:
            raise UsageError(f"{k} must be >= 0, got {getattr(cfg, k)}")
    if cfg.n_embd % cfg.n_head:
        raise UsageError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    for k in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
        v = getattr(cfg, k)
        if not (math.isfinite(v) and v >= 0):
            raise UsageError(f"{k} must be a finite number >= 0, got {v}")
    for k in ("beta1", "beta2"):
        if not (0.0 <= getattr(cfg, k) < 1.0):
            raise UsageError(f"{k} must be in [0, 1), got {getattr(cfg, k)}")
    for k in ("data", "out_dir"):
        if not getattr(cfg, k).strip():
            raise UsageError(f"{k} is empty; give a path")
    if not (0.0 <= cfg.dropout < 1.0):
        raise UsageError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.tokenizer == "char" and cfg.vocab_size:
        raise UsageError("vocab_size applies only to --tokenizer bpe (the char vocabulary comes from the corpus)")
    if cfg.tokenizer == "bpe" and cfg.vocab_size and cfg.vocab_size < 257:
        raise UsageError(f"vocab_size must be at least 257 for byte-level BPE (256 bytes + merges), got {cfg.vocab_size}")


# --------------------------------------------------------------------------------- the run

class NonFiniteLoss(NumformerError):
    pass


class Trainer:
    """Holds one run: the model, its optimizer, the data and the RNG streams."""

    def __init__(self, cfg: TrainConfig, world, *, resume: bool = False, cache_dir=None, log=print):
        from numformer.data import batches
        from numformer.data.corpus import load_text
        from numformer.model.config import GPTConfig
        from numformer.model.gpt import GPT
        from numformer.optim import AdamW

        from numformer.parallel.process import tune_malloc

        tune_malloc()
        self.cfg, self.world, self.log = cfg, world, log
        self.out_dir = Path(cfg.out_dir)
        self.latest, self.best = self.out_dir / "latest", self.out_dir / "best"
        # Under MPI only rank 0 reads the checkpoint, the corpus and the token cache and sends
        # what it got to the other ranks (bcast; the identity for a single process): ranks never
        # race on the cache, BPE is trained once, and other hosts need neither corpus nor out_dir.
        ckpt = None
        if resume:
            ckpt = world.bcast(self._load_resume_checkpoint() if world.is_main else None)

        def load_data():
            text, name = load_text(None if cfg.data == "shakespeare" else cfg.data)
            if ckpt is not None:
                # the tokenizer travels inside the checkpoint; the corpus is re-encoded with it
                from numformer.data.tokenizer import from_json

                tok = from_json(ckpt.tokenizer)
                return (*batches.prepare(text, tokenizer=tok, cache_dir=cache_dir), name)
            return (*batches.prepare(
                text, tokenizer=cfg.tokenizer, vocab_size=(cfg.vocab_size or None) if cfg.tokenizer == "bpe" else None,
                cache_dir=cache_dir), name)

        data = world.bcast(load_data() if world.is_main else None)
        self.train_ids, self.val_ids, self.tokenizer, self.data_name = data
        batches.check_length(self.train_ids, self.val_ids, cfg.block_size)

        mcfg = GPTConfig(vocab_size=self.tokenizer.vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias,
                         pos_encoding=cfg.pos_encoding, gelu=cfg.gelu)
        self.model = GPT(mcfg, dtype=np.dtype(cfg.dtype), seed=cfg.seed)
        from numformer.parallel.process import cores

        self.threads = cfg.threads or (cores() if world.size == 1 else 1)
        self.opt = AdamW(self.model.params.flat, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                         weight_decay=cfg.weight_decay, decay_mask=self.model.decay_mask(), threads=self.threads)
        self.batch_rng = np.random.default_rng([cfg.seed, 0])
        self.iter_num = 0
        self.best_val = float("inf")
        if ckpt is not None:
            self._restore(ckpt)

    # -- checkpoints ---------------------------------------------------------------------------

    def _load_resume_checkpoint(self):
        from numformer.checkpoint import load_checkpoint
        from numformer.errors import CheckpointError

        if not self.latest.exists() and not any(self.out_dir.glob(".latest.numformer-old-*")):
            raise CheckpointError(f"--resume: no checkpoint at {self.latest}; start without --resume")
        ckpt = load_checkpoint(self.latest)
        train = ckpt.config.get("train")
        saved = train.get("config") if isinstance(train, dict) else None
        if not isinstance(saved, dict):
            raise CheckpointError(f"{self.latest}: config.json has no training state to resume from")
        for key in FIXED_ON_RESUME:
            if key in saved and saved[key] != getattr(self.cfg, key):
                raise UsageError(f"--resume: {key} is {saved[key]!r} in {self.latest} but {getattr(self.cfg, key)!r} "
                                 f"now; a resumed run keeps its model and data")
        return ckpt

    def _restore(self, ckpt) -> None:
        from numformer.errors import CheckpointError

        self.model.load_state_dict(ckpt.model, source=str(self.latest))
        st = ckpt.config["train"]
        try:
            if ckpt.optimizer is None:
                raise KeyError("optimizer.safetensors")
            self.opt.load_state_dict({"m": ckpt.optimizer["m"], "v": ckpt.optimizer["v"], "step": int(st["opt_step"])})
            self.iter_num = int(st["iter_num"])
            self.best_val = float(st["best_val_loss"])
            self.batch_rng.bit_generator.state = st["batch_rng"]
            self.model.rng.bit_generator.state = st["dropout_rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{self.latest}: incomplete training state ({e})") from None

    def train_state(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
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
        self.model.save(path, tokenizer=self.tokenizer.to_json(), optimizer={"m": st["m"], "v": st["v"]},
                        train_state=self.train_state())

    # -- one step ------------------------------------------------------------------------------

    def get_batch(self, ids, rng):
        """The global batch is drawn the same way on every rank; each rank keeps its slice."""
        from numformer.data.batches import get_batch

        x, y = get_batch(ids, self.cfg.block_size, self.cfg.batch_size, rng)
        lo, hi = shard(self.cfg.batch_size, self.world.rank, self.world.size)
        return x[lo:hi], y[lo:hi]

    def step(self) -> float:
        from numformer.optim.clip import clip_grad_norm
        from numformer.optim.schedule import cosine_lr

        cfg, model = self.cfg, self.model
        lr = cosine_lr(self.iter_num, cfg.learning_rate, cfg.warmup_iters, cfg.lr_decay_iters, cfg.min_lr)
        x, y = self.get_batch(self.train_ids, self.batch_rng)
        model.zero_grad()
        share = x.shape[0] / cfg.batch_size     # this rank's part of the global mean
        if self.world.size > 1 and cfg.dropout > 0:
            # each rank its own dropout masks (one shared stream would repeat them across ranks),
            # a function of (seed, step, rank) so that a resumed run draws the same ones
            model.rng = np.random.default_rng([cfg.seed, 1, self.iter_num, self.world.rank])
        if x.shape[0]:
            loss = loss_and_grad(model, x, y, dloss=share, threads=self.threads)
            if self.world.size > 1 and not math.isfinite(loss):   # name the rank before the sum hides it
                raise NonFiniteLoss(f"loss became {loss} at step {self.iter_num} on rank {self.world.rank} "
                                    f"of {self.world.size}")
        else:
            loss = 0.0
        self.world.allreduce_sum(model.grads.flat)
        loss = self.world.allreduce_scalar(loss * share)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss} at step {self.iter_num}")
        if cfg.grad_clip > 0:
            norm = clip_grad_norm(model.grads.flat, cfg.grad_clip)
            if not math.isfinite(norm):
                raise NonFiniteLoss(f"gradient norm became {norm} at step {self.iter_num}")
        self.opt.step(model.grads.flat, lr=lr)
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


def shard(batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch that rank keeps: sizes differ by at most one when size
    does not divide batch_size (the first batch_size % size ranks get one more)."""
    base, extra = divmod(batch_size, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def run(cfg: TrainConfig, *, resume=False, overwrite=False, cache_dir=None, plot=True, world=None, out=None) -> dict:
    """Train as configured. Returns a summary dict (final losses, timings)."""
    from numformer.checkpoint import lock_folder
    from numformer.distributed import init_world

    world = world or init_world()
    if not cfg.out_dir.strip():
        raise UsageError("out_dir is empty; give a folder (\".\" for the current one)")
    if cache_dir is not None and not str(cache_dir).strip():
        raise UsageError("cache_dir is empty; give a folder or leave it out")
    out_dir = Path(cfg.out_dir)
    if world.size > cfg.batch_size:
        raise UsageError(f"batch_size {cfg.batch_size} is smaller than the number of ranks ({world.size}): each rank "
                         f"needs at least one sequence of the global batch; use --batch_size {world.size} or more")
    # out_dir is rank 0's (the only writer); on other hosts it need not exist
    if not world.is_main:
        return _run(cfg, world, resume=resume, overwrite=overwrite, cache_dir=cache_dir, plot=plot, out=out)
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise UsageError(f"--out_dir {out_dir} exists and is not a folder")
    lock = lock_folder(out_dir, "numformer train")
    try:
        return _run(cfg, world, resume=resume, overwrite=overwrite, cache_dir=cache_dir, plot=plot, out=out)
    finally:
        lock.release()


def _run(cfg: TrainConfig, world, *, resume, overwrite, cache_dir, plot, out) -> dict:
    out = out or sys.stdout
    log = (lambda msg: print(msg, file=out, flush=True)) if world.is_main else (lambda msg: None)
    out_dir = Path(cfg.out_dir)
    if world.is_main:  # rank 0 holds the lock on out_dir: nothing can change under these checks
        if not resume and not overwrite and _holds_checkpoints(out_dir):
            raise UsageError(f"{out_dir} already holds a checkpoint; use --resume to continue it, "
                             f"--overwrite to start afresh, or another --out_dir")
        metrics = out_dir / "metrics.jsonl"
        if os.path.lexists(metrics) and not _is_our_metrics(metrics):
            raise UsageError(f"{metrics} exists and was not written by numformer train; move it or choose "
                             f"another --out_dir")
        png = out_dir / "loss.png"
        if plot and os.path.lexists(png) and not _is_our_plot(png):
            raise UsageError(f"{png} exists and was not written by numformer train; move it, choose another "
                             f"--out_dir, or pass --no_plot")
    t_setup = time.perf_counter()
    tr = Trainer(cfg, world, resume=resume, cache_dir=cache_dir, log=log)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)   # ours: checked before the Trainer was built
    m = tr.model
    log(f"numformer train: {tr.data_name}, {len(tr.train_ids):,} train / {len(tr.val_ids):,} val tokens, "
        f"vocab {tr.tokenizer.vocab_size} ({cfg.tokenizer}); model {m.num_params():,} parameters "
        f"({cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size}, "
        f"{cfg.pos_encoding} positions)" + (f"; {world.size} ranks" if world.size > 1 else "")
        + (f"; resuming at step {tr.iter_num}" if resume else "") + f" [setup {time.perf_counter() - t_setup:.1f}s]")

    tokens_per_iter = cfg.batch_size * cfg.block_size
    bar = None
    if world.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_iters, initial=tr.iter_num, unit="it", dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.5, smoothing=0.1)
    summary = {"interrupted": False}
    in_step = False               # True while a step runs: its state is then half-updated
    last_eval_iter = None
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
                    _append_metrics(out_dir, tr, losses, iters_done / t_train * tokens_per_iter if t_train else None)
                improved = losses["val"] < tr.best_val
                if improved:
                    tr.best_val = losses["val"]
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
            elif os.path.lexists(out_dir / "loss.png") and not _is_our_plot(out_dir / "loss.png"):
                log(f"{out_dir / 'loss.png'} appeared during the run and is not numformer's: no plot written")
        if cfg.sample_tokens:
            log("sample:")
            log(_sample_text(tr, cfg.sample_tokens))
    return summary


def _is_our_metrics(path: Path) -> bool:
    """Every line a JSON object with the keys numformer train writes (so it may be replaced)."""
    if path.is_symlink():
        return False
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return all(isinstance(r, dict) and {"step", "train_loss", "val_loss"} <= r.keys() for r in rows)


def _holds_checkpoints(out_dir: Path) -> bool:
    """latest/ or best/, or one set aside by a save that was interrupted between its renames."""
    if any((out_dir / name / "config.json").exists() for name in ("latest", "best")):
        return True
    return out_dir.is_dir() and any(out_dir.glob(".latest.numformer-old-*")) or \
        out_dir.is_dir() and any(out_dir.glob(".best.numformer-old-*"))


def _append_metrics(out_dir: Path, tr: Trainer, losses: dict, tokens_per_sec) -> None:
    from numformer.checkpoint import replace_file
    from numformer.optim.schedule import cosine_lr

    c = tr.cfg
    row = {"step": tr.iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
           "lr": cosine_lr(tr.iter_num, c.learning_rate, c.warmup_iters, c.lr_decay_iters, c.min_lr),
           "tokens_per_sec": tokens_per_sec, "time": time.time()}
    path = out_dir / "metrics.jsonl"
    rows = read_metrics(path)
    rows = [r for r in rows if r["step"] < tr.iter_num] + [row]   # a resumed run rewrites what follows
    replace_file(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                if isinstance(r, dict) and isinstance(r.get("step"), int):
                    rows.append(r)
            except json.JSONDecodeError:
                continue
    return rows


# loss.png carries a PNG text chunk with this keyword: numformer replaces only a plot of its own
PNG_KEY = "numformer"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_our_plot(path: Path) -> bool:
    """A PNG file with numformer's text chunk (PNG_KEY) before its image data."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if not head.startswith(_PNG_SIGNATURE):
        return False
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(head):           # chunks: length (4, big-endian), type (4), data, CRC (4)
        length = int.from_bytes(head[pos:pos + 4], "big")
        kind = head[pos + 4:pos + 8]
        data = head[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and data.split(b"\0", 1)[0] == PNG_KEY.encode("latin-1"):
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


def plot_losses(out_dir: Path):
    """Write out_dir/loss.png: train and val loss at each evaluation. A loss.png that numformer
    did not write is left alone (returns None, as when there is nothing to plot)."""
    import io

    from numformer.checkpoint import replace_file

    rows = read_metrics(out_dir / "metrics.jsonl")
    png = out_dir / "loss.png"
    if len(rows) < 1 or os.path.lexists(png) and not _is_our_plot(png):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(steps, [r["train_loss"] for r in rows], "o-", label="train", ms=3)
    ax.plot(steps, [r["val_loss"] for r in rows], "s-", label="val", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title("numformer train")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={PNG_KEY: "loss curve of numformer train"})
    plt.close(fig)
    replace_file(png, buf.getvalue())
    return png


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


def main(args) -> int:
    from numformer.distributed import init_world

    world = init_world()
    # under MPI: an error on any rank stops the whole job with one line from that rank, never a hang
    with world.guard("numformer train"):
        cfg = world.bcast(resolve_config(args) if world.is_main else None)   # rank 0 reads the TOML file
        summary = run(cfg, resume=args.resume, overwrite=args.overwrite, cache_dir=args.cache_dir,
                      plot=not args.no_plot, world=world)
    return 130 if summary.get("interrupted") else 0
