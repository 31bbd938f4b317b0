"""TrainConfig: what a run of `numformer train` is told, and how flags and TOML files become one.

A TrainConfig holds the model's shape as a GPTConfig or a LlamaConfig (`cfg.model`; `--arch gpt2`
or `--arch llama`, `cfg.arch`), beside the data, optimiser and output settings. Flags, TOML keys
and the record in a checkpoint stay flat (`--n_layer`, `n_layer = 4`): ARCH_KEYS[arch] are the
config fields a run of that arch sets, read as `cfg.model.n_layer`; a key of the other arch is
refused in one line. The model's vocab_size comes from the tokenizer when the run starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from numformer.checkpoint import JSON_LIMIT, load_checkpoint, read_file
from numformer.errors import CheckpointError, UsageError
from numformer.model.adapters import parse_targets
from numformer.model.config import (ARCHS, CONFIGS, GELUS, POS_ENCODINGS, SINUSOIDAL_FORMS, GPTConfig, InvalidConfig,
                                    LlamaConfig)
from numformer.model.params import ALL_LORA_TARGETS, DEFAULT_LORA_TARGETS, DEFAULT_LORA_TARGETS_OF
from numformer.model.serialize import checkpoint_family, model_config
from numformer.training.finetune import init_settings, validate_finetuning

# The GPTConfig fields a run sets; vocab_size comes from the tokenizer, layer_norm_eps is GPT-2's.
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "pos_encoding",
              "sinusoidal_form", "gelu")
# The LlamaConfig fields a run sets; rms_norm_eps is Llama's 1e-5.
LLAMA_KEYS = ("n_layer", "n_head", "n_kv_head", "n_embd", "n_hidden", "block_size", "dropout", "rope_theta",
              "tie_embeddings", "attention_bias")
ARCH_KEYS = {"gpt2": MODEL_KEYS, "llama": LLAMA_KEYS}
# The flags of the Llama's own keys: their defaults, 0 for "the config's own default" (n_kv_head:
# n_head; n_hidden: Llama's rounding of 2/3 · 4C), which a run records as the number it became.
LLAMA_FLAG_DEFAULTS = {"n_kv_head": 0, "n_hidden": 0, "rope_theta": LlamaConfig.rope_theta,
                       "tie_embeddings": LlamaConfig.tie_embeddings, "attention_bias": LlamaConfig.attention_bias}
LLAMA_FLAG_TYPES = {"n_kv_head": "int", "n_hidden": "int", "rope_theta": "float", "tie_embeddings": "bool",
                    "attention_bias": "bool"}


@dataclass
class TrainConfig:
    # data
    data: str = "shakespeare"
    tokenizer: str = "char"
    vocab_size: int = 0            # BPE only: the vocabulary size to train (0: 1024)
    # the model: nanoGPT's CPU "baby GPT" (4 layers, 4 heads, 128 wide, block 64) by default
    model: GPTConfig | LlamaConfig = field(default_factory=GPTConfig)
    # optimisation
    batch_size: int = 12
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0        # 0: max_iters (the decay ends with the run)
    gradient_accumulation_steps: int = 1   # micro-batches per step, accumulated into one gradient
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # evaluation and output
    eval_interval: int = 250
    eval_iters: int = 20
    eval_only: bool = False        # evaluate once and exit: no training, nothing written
    log_interval: int = 0          # print the training loss every this many steps (0: only the progress bar)
    out_dir: str = "out"
    seed: int = 1337
    dtype: str = "float32"
    threads: int = 0               # threads for each step's shards and AdamW (0: one per core; 1 under MPI)
    sample_tokens: int = 300       # length of the sample printed at the end (0: none)
    # fine-tuning (numformer.training.finetune)
    init_from: str = ""            # start from this checkpoint, Hugging Face folder or GGUF file ("": from scratch)
    lora_rank: int = 0             # train low-rank adapters of this rank, the rest frozen (0: train every weight)
    lora_alpha: float = 0.0        # adapters are scaled by lora_alpha / lora_rank (0: alpha = rank)
    lora_targets: str = ",".join(DEFAULT_LORA_TARGETS)

    @classmethod
    def of(cls, **flat) -> "TrainConfig":
        """A TrainConfig from flat keys, as flags and TOML files give them (arch=..., n_layer=...,
        ...). UsageError for a model key of another arch; InvalidConfig for a bad model value."""
        arch = flat.pop("arch", "gpt2")
        keys = ARCH_KEYS[arch]
        foreign = [k for arch_keys in ARCH_KEYS.values() for k in arch_keys if k in flat and k not in keys]
        if foreign:
            other = next(a for a, arch_keys in ARCH_KEYS.items() if foreign[0] in arch_keys)
            raise UsageError(f"--{foreign[0]} applies to --arch {other}; this run's --arch is {arch}")
        model = {k: flat.pop(k) for k in keys if k in flat}
        if arch == "llama":
            for k in ("n_kv_head", "n_hidden"):        # 0: the config's own default
                if model.get(k) == 0:
                    model[k] = None
            flat.setdefault("lora_targets", ",".join(DEFAULT_LORA_TARGETS_OF["llama"]))
        return cls(**flat, model=CONFIGS[arch](**model))

    @property
    def arch(self) -> str:
        """The model's family: "gpt2" or "llama"."""
        return self.model.family

    @property
    def decay_iters(self) -> int:
        """The step at which the cosine decay reaches min_lr: lr_decay_iters, or max_iters when 0."""
        return self.lr_decay_iters or self.max_iters

    def to_flat(self) -> dict:
        """The flat keys and values (what a checkpoint records and a TOML file may set): the run's
        settings, the arch and that arch's model keys."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d["arch"] = self.arch
        d.update({k: getattr(self.model, k) for k in ARCH_KEYS[self.arch]})
        return d


HELP = {
    "data": "'shakespeare' (built in), a UTF-8 text file, or a folder of .txt files",
    "tokenizer": "'char' or 'bpe' (byte-level BPE trained on the corpus)",
    "vocab_size": "vocabulary size for --tokenizer bpe (0 means 1024)",
    "arch": "'gpt2' (numformer's GPT: LayerNorm, positions added, GELU MLP, tied head) or 'llama' (RMSNorm, RoPE, "
            "grouped-query attention, SwiGLU MLP, no biases, untied head by default)",
    "n_layer": "number of Transformer blocks",
    "n_head": "attention heads per block",
    "n_embd": "embedding width C",
    "block_size": "context length T",
    "dropout": "dropout probability (0 disables it)",
    "bias": "--arch gpt2: biases in Linear and LayerNorm layers (true/false)",
    "pos_encoding": "--arch gpt2: 'sinusoidal' (the article's formula 2) or 'learned' (GPT-2)",
    "sinusoidal_form": "--arch gpt2: how sinusoidal positions are added: 'scaled' (wte + P/sqrt(C)), 'paper' (sqrt(C)*wte + P) or 'article' (wte + P)",
    "gelu": "--arch gpt2: 'tanh' (GPT-2's approximation) or 'exact' (erf)",
    "n_kv_head": "--arch llama: key/value heads, each shared by n_head / n_kv_head query heads (0: n_head; 1: "
                 "multi-query attention)",
    "n_hidden": "--arch llama: SwiGLU width (0: Llama's rule, 2/3 of 4*n_embd rounded up to a multiple of 256)",
    "rope_theta": "--arch llama: RoPE's theta (Llama 3 uses 500000, Qwen2 1000000)",
    "tie_embeddings": "--arch llama: use the token embedding as the LM head (true/false)",
    "attention_bias": "--arch llama: biases on the q, k and v projections, as Qwen2 has them (true/false)",
    "batch_size": "sequences per step (the global batch under MPI)",
    "max_iters": "optimizer steps in total",
    "learning_rate": "peak learning rate",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_iters": "steps of linear warmup",
    "lr_decay_iters": "step at which the cosine decay reaches min_lr (0: max_iters, so the decay ends with the run, "
                      "and a resumed run with a larger --max_iters stretches it to the new end)",
    "gradient_accumulation_steps": "split each step's batch into this many micro-batches and add up their gradients: "
                                   "the same step as one batch of batch_size, in the memory of batch_size/N sequences",
    "weight_decay": "AdamW decoupled weight decay (matrices and embeddings only)",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "grad_clip": "clip the global gradient norm to this (0 disables clipping)",
    "eval_interval": "evaluate, log and checkpoint every this many steps",
    "eval_iters": "batches averaged for each evaluation",
    "eval_only": "evaluate train and val loss once (the resumed checkpoint's with --resume) and exit; nothing is written",
    "log_interval": "print the training loss every this many steps (0: only the progress bar shows it)",
    "out_dir": "folder for checkpoints (latest/, best/), metrics.jsonl and loss.png",
    "seed": "random seed for the initial weights, batches and dropout (an integer >= 0)",
    "dtype": "'float32' or 'float64'",
    "threads": "split each batch, and the AdamW update, over this many threads (0: one per core, or 1 per MPI rank)",
    "sample_tokens": "length of the text sample printed at the end (0 for none)",
    "init_from": "fine-tune: start from this numformer checkpoint folder (or a run's out_dir), Hugging Face GPT-2, "
                 "Llama, Mistral or Qwen2 folder, or GGUF file, at step 0 with a fresh optimizer; the model and "
                 "tokenizer come from it",
    "lora_rank": "fine-tune low-rank adapters of this rank and freeze every other weight (0: train every weight)",
    "lora_alpha": "adapter scale: the adapters' output is multiplied by lora_alpha / lora_rank (0: alpha = rank)",
    "lora_targets": f"comma-separated layers that get adapters: {', '.join(ALL_LORA_TARGETS[:4])} (--arch gpt2), "
                    f"{', '.join(ALL_LORA_TARGETS[4:])} (--arch llama; its default: "
                    f"{','.join(DEFAULT_LORA_TARGETS_OF['llama'])})",
}


FIXED_ON_RESUME = ("data", "tokenizer", "vocab_size", "arch", "n_layer", "n_head", "n_embd", "block_size",
                   "bias", "pos_encoding", "sinusoidal_form", "gelu", "n_kv_head", "n_hidden", "rope_theta",
                   "tie_embeddings", "attention_bias", "dtype", "init_from", "lora_rank", "lora_alpha", "lora_targets")
CHOICES = {"tokenizer": ("char", "bpe"), "arch": ARCHS, "pos_encoding": POS_ENCODINGS,
           "sinusoidal_form": tuple(SINUSOIDAL_FORMS), "gelu": GELUS, "dtype": ("float32", "float64")}


def fields() -> dict:
    """Flat key -> its type name ("int", "float", "str", "bool") and default, in --help order (the
    Llama's own keys with their flags' defaults, LLAMA_FLAG_DEFAULTS)."""
    out = {}
    defaults = {**TrainConfig().to_flat(), **LLAMA_FLAG_DEFAULTS}
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    types.update({f.name: f.type for f in dataclasses.fields(GPTConfig)})
    types.update(LLAMA_FLAG_TYPES, arch="str")
    for key in ("data", "tokenizer", "vocab_size", "arch", *MODEL_KEYS, *LLAMA_FLAG_DEFAULTS,
                *[k for k in defaults if k not in out]):
        if key not in out:
            t = types[key]
            out[key] = (t if isinstance(t, str) else t.__name__, defaults[key])
    return out


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _check_type(key: str, value, source: str):
    """Return value as the field's type, or raise UsageError naming the key and source."""
    want = {"int": int, "float": float, "str": str, "bool": bool}[fields()[key][0]]
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if want is bool and isinstance(value, bool) or want is not bool and type(value) is want:
        if key in CHOICES and value not in CHOICES[key]:
            raise UsageError(f"{source}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        return value
    raise UsageError(f"{source}: {key} must be {want.__name__}, got {type(value).__name__} {value!r}")


def load_toml(path: str) -> dict:
    p = Path(path)
    if not os.path.lexists(p):
        raise UsageError(f"{p}: config file not found")
    try:   # a regular file of sane size only: a FIFO would block, /dev/zero never ends
        d = tomllib.loads(read_file(p, JSON_LIMIT, error=UsageError).decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: not valid TOML: {e}") from None
    except RecursionError:
        raise UsageError(f"{p}: not valid TOML: nested too deeply") from None
    except OSError as e:
        raise UsageError(f"{p}: cannot be read ({e.strerror or type(e).__name__})") from None
    known = fields()
    out = {}
    for key, value in d.items():
        if key not in known:
            raise UsageError(f"{p}: unknown key {key!r} (valid keys: {', '.join(known)})")
        out[key] = _check_type(key, value, str(p))
    return out


def validate(cfg: TrainConfig) -> None:
    """The run's own settings. The model's (n_layer, n_head, dropout ...) were checked once, by
    its GPTConfig or LlamaConfig, when TrainConfig.of built it (resolve turns its InvalidConfig
    into a UsageError)."""
    for k in ("batch_size", "eval_interval", "eval_iters", "gradient_accumulation_steps"):
        if getattr(cfg, k) < 1:
            raise UsageError(f"{k} must be >= 1, got {getattr(cfg, k)}")
    for k in ("max_iters", "warmup_iters", "lr_decay_iters", "sample_tokens", "vocab_size", "threads", "seed",
              "log_interval"):
        if getattr(cfg, k) < 0:
            raise UsageError(f"{k} must be >= 0, got {getattr(cfg, k)}")
    if cfg.gradient_accumulation_steps > cfg.batch_size:
        raise UsageError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be at most batch_size "
                         f"({cfg.batch_size}): each micro-batch needs at least one sequence")
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
    if cfg.tokenizer == "char" and cfg.vocab_size:
        raise UsageError("vocab_size applies only to --tokenizer bpe (the char vocabulary comes from the corpus)")
    if cfg.tokenizer == "bpe" and cfg.vocab_size and cfg.vocab_size < 257:
        raise UsageError(f"vocab_size must be at least 257 for byte-level BPE (256 bytes + merges), got {cfg.vocab_size}")
    validate_finetuning(cfg)


def resolve(given: dict, *, resume: bool = False):
    """(TrainConfig, checkpoint or None) from the settings given as flat keys (flags, a TOML file).

    Fresh: the defaults, then `given`. With resume: out_dir/latest is read, once; its run's own
    settings take the place of the defaults, and a model or data key in `given` that differs
    from them (FIXED_ON_RESUME) is refused. A resumed run may change its schedule and evaluation.
    """
    values, ckpt, latest = {}, None, None
    if resume:
        latest = Path(given.get("out_dir", TrainConfig.out_dir)) / "latest"
        ckpt, saved = _resume_checkpoint(latest)
        for key in FIXED_ON_RESUME:
            if key in given and key in saved and not _same_setting(key, given[key], saved[key]):
                raise UsageError(f"--resume: {key} is {saved[key]!r} in {latest} but {given[key]!r} was given; "
                                 f"a resumed run keeps its model and data")
        values.update(saved)
    values.update(given)
    if not resume and values.get("init_from"):
        values.update(init_settings(values["init_from"], given))   # the model's shape comes from init_from
    try:
        cfg = TrainConfig.of(**values)
    except InvalidConfig as e:
        if latest is not None and e.key not in given:              # the checkpoint's own value
            raise CheckpointError(f"{latest / 'config.json'}: {e}") from None
        raise UsageError(str(e)) from None
    validate(cfg)
    return cfg, ckpt


def _same_setting(key: str, given, saved) -> bool:
    """Whether a resumed run's `given` value of `key` is the one its checkpoint records. The LoRA
    targets are a set of layers: "attn.c_proj,attn.c_attn" names the same adapters as
    "attn.c_attn,attn.c_proj"."""
    if key == "lora_targets" and isinstance(given, str) and isinstance(saved, str):
        return set(parse_targets(given)) == set(parse_targets(saved))
    return given == saved


def _resume_checkpoint(latest: Path):
    """The checkpoint at `latest` and the training settings it records, type-checked (keys this
    version does not know are dropped)."""
    if not latest.exists() and not any(latest.parent.glob(".latest.numformer-old-*")):
        raise CheckpointError(f"--resume: no checkpoint at {latest}; start without --resume")
    ckpt = load_checkpoint(latest)       # says where a checkpoint set aside by a crash is
    train = ckpt.config.get("train")
    saved = train.get("config") if isinstance(train, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{latest}: config.json has no training state to resume from")
    model = ckpt.config.get("model")
    family = checkpoint_family(ckpt.config) or "gpt2"     # a config.json that names no family: a GPT's, as before
    try:                                 # the full model config (vocab_size too) the run resumes with
        if not isinstance(model, dict):
            raise InvalidConfig("model", "no \"model\" section")
        model_config(family, model)
    except InvalidConfig as e:
        raise CheckpointError(f"{latest / 'config.json'}: bad model config: {e}") from None
    known = fields()
    saved = {k: _check_type(k, v, f"{latest}/config.json") for k, v in saved.items() if k in known}
    saved["arch"] = family               # the family the checkpoint holds (runs before --arch recorded none)
    return ckpt, saved
