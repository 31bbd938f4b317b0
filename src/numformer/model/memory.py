"""How much memory a model needs, whether the machine has it, and whether a config fits its weights.

Every number here comes from shapes alone, so a refusal costs nothing: a config.json that says
n_layer 1000000000 is answered before a single parameter is allocated.

    parameters P                  gpt_params(cfg) / llama_params(cfg) (model_params: either, by the
                                  config's family) / encoder_params(cfg), in closed form (no loop
                                  over layers, so a huge n_layer costs nothing to count)
    sampling, embedding           weights: P · itemsize, plus the file as it is read
    training                      P · itemsize four times (weights, gradients, Adam's m and v)
                                  + activations kept for the backward pass:
                                    B·T · (L · ACT_PER_LAYER · C + ACT_HEAD · V) · itemsize
                                  (a Llama: its SwiGLU width H in place of the GPT's 4C)
                                  + the batch itself (int64 ids and targets)

The available memory is MemAvailable from /proc/meminfo (what Linux can hand out without
swapping), else the free physical pages from os.sysconf; when neither is known nothing is refused.

Shapes are checked against the tensors of a safetensors file through its header alone
(`header_shapes`), before the file's data is read: a numformer checkpoint's config must describe
exactly the parameters its file holds (`check_counts`), and a Hugging Face config may not ask for
more blocks than its file has tensors for (`check_blocks`; the per-tensor checks that follow
then name any tensor that differs).
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

from safetensors import SafetensorError, safe_open

from numformer.errors import CheckpointError, MemoryLimitError

# Floats kept per token for each block's backward (LayerNorm inputs and outputs, q k v, the
# attention output, the MLP's 4C hidden layer before and after GELU, residual sums) and per token
# for the head (logits, softmax probabilities, their gradient). Measured against peak RSS of
# training runs; an estimate, not a bound.
ACT_PER_LAYER = 12
ACT_HEAD = 3


def available() -> int | None:
    """Bytes of memory this process can still get without swapping, or None if unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- parameter counts


def gpt_params(cfg) -> int:
    """Parameters of a numformer GPT (model.params.GPT2.shapes, counted without the loop)."""
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.n_layer
    b = 1 if cfg.bias else 0
    layernorm = C + b * C
    block = 2 * layernorm + (3 * C * C + b * 3 * C) + (C * C + b * C) + (4 * C * C + b * 4 * C) + (4 * C * C + b * C)
    wpe = cfg.block_size * C if cfg.pos_encoding == "learned" else 0
    return V * C + wpe + L * block + layernorm


def llama_params(cfg) -> int:
    """Parameters of a numformer Llama (model.params.LLAMA.shapes, counted without the loop)."""
    C, V, L, H = cfg.n_embd, cfg.vocab_size, cfg.n_layer, cfg.n_hidden
    kv = cfg.n_kv_head * cfg.head_size
    qkv_bias = (C + 2 * kv) if cfg.attention_bias else 0
    block = 2 * C + (C * C + 2 * kv * C + qkv_bias) + C * C + 3 * C * H
    return V * C + L * block + C + (0 if cfg.tie_embeddings else V * C)


def model_params(cfg) -> int:
    """Parameters of the decoder a GPTConfig or LlamaConfig describes."""
    return llama_params(cfg) if cfg.family == "llama" else gpt_params(cfg)


def encoder_params(cfg) -> int:
    """Parameters of a BERT encoder (model.params.BERT.shapes, counted without the loop)."""
    C, F = cfg.hidden_size, cfg.intermediate_size
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * C + 2 * C
    block = 4 * (C * C + C) + 2 * C + (F * C + F) + (C * F + C) + 2 * C
    return embeddings + cfg.num_hidden_layers * block


# ----------------------------------------------------------------------------- estimates


def training_estimate(cfg, batch_size: int, itemsize: int, ranks: int = 1,
                      accumulation: int = 1) -> list[tuple[str, int]]:
    """(part, bytes) of one training process: weights, gradients, Adam moments, activations of its
    largest micro-batch (its share of the batch, cut into `accumulation` micro-batches whose
    activations are freed before the next one runs), and the batch's ids."""
    P = model_params(cfg)
    rows = -(-batch_size // ranks)                    # this rank's rows of the global batch
    rows = -(-rows // max(1, accumulation))           # the largest micro-batch of them
    tokens = rows * cfg.block_size
    per_layer = ACT_PER_LAYER * cfg.n_embd
    if cfg.family == "llama":                          # two H-wide arrays (gate, up) where the GPT has two 4C
        per_layer += 2 * cfg.n_hidden - 8 * cfg.n_embd
    per_token = cfg.n_layer * per_layer + ACT_HEAD * cfg.vocab_size
    return [
        ("parameters", P * itemsize),
        ("gradients", P * itemsize),
        ("Adam moments", 2 * P * itemsize),
        (f"activations for {rows}×{cfg.block_size} tokens", tokens * per_token * itemsize),
        ("batch ids", 3 * batch_size * cfg.block_size * 8),   # offsets, x and y, int64, global batch
    ]


def refuse_if_too_big(what: str, parts: list[tuple[str, int]], advice: str, have: int | None = None) -> int:
    """Raise MemoryLimitError (one line, with the estimate and its parts) if the parts add up to
    more than the machine has available; return the total."""
    total = sum(n for _, n in parts)
    have = available() if have is None else have
    if have is not None and total > have:
        detail = ", ".join(f"{label} {human(n)}" for label, n in parts if n)
        raise MemoryLimitError(f"{what} needs about {human(total)} of memory ({detail}) but this machine has "
                               f"{human(have)} available; {advice}")
    return total


# ----------------------------------------------------------------------------- configs against files


def header_shapes(file) -> dict[str, tuple[int, ...]] | None:
    """Name -> shape of every tensor in a safetensors file, from its header only (no data is read).

    None when the header cannot be read: the full reader (numformer.checkpoint.read_safetensors)
    then says what is wrong with the file."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):      # a FIFO would block the open
            return None
        with safe_open(str(file), framework="numpy") as f:
            return {name: tuple(int(s) for s in f.get_slice(name).get_shape()) for name in f.keys()}
    except (OSError, SafetensorError):  # the full reader reports them
        return None


def count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def check_counts(needed: int, held: int, config_source, weights_source, described: str, exact: bool = False) -> None:
    """CheckpointError (one line) if a config needs more parameters than its weights hold (or,
    with exact, a different number): the config does not describe these weights."""
    if needed > held or (exact and needed != held):
        raise CheckpointError(f"{config_source} describes a model of {needed:,} parameters ({described}) but "
                              f"{weights_source} holds {held:,}; the shapes in the config do not match the weights")


def check_blocks(n_config: int, key: str, shapes: dict[str, tuple[int, ...]], pattern: str, config_source,
                 weights_source) -> None:
    """CheckpointError (one line) if a config asks for more blocks (layers) than the file has tensors
    for: the per-tensor checks that follow loop over the config's blocks, so this bounds them by
    the file. `pattern` finds a block's index in a tensor name (r"\\.h\\.(\\d+)\\.")."""
    found = {m.group(1) for name in shapes if (m := re.search(pattern, name))}
    if n_config > len(found):
        raise CheckpointError(f"{config_source}: {key} is {n_config:,} but {weights_source} holds the weights of "
                              f"{len(found)} block{'' if len(found) == 1 else 's'}; the config does not describe these weights")


def file_bytes(files) -> int:
    return sum(Path(f).stat().st_size for f in files)
