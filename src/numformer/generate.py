"""Sampling from a GPT, with a KV cache, and the `numformer sample` command.

Each step turns the last position's logits into a distribution and draws one token:

    p = softmax(logits / temperature)       temperature 0 means greedy (argmax)
    top_k: keep the k most likely tokens    top_p: keep the smallest set whose mass reaches p

With the KV cache a new token costs one position's work: its query attends to the keys and values
already stored for the tokens before it. Once the context holds block_size tokens the window
slides: the oldest token drops out and, because every position then moves, the cache is refilled
from the last block_size tokens. The logits are the same as those of an uncached forward pass over
the same window (tests/model/test_generate.py checks it).
"""

from __future__ import annotations

import sys

import numpy as np


def sample_next(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw one token id per row of logits (B, V). Returns (B,) int64."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    if rng is None:
        rng = np.random.default_rng()
    z = logits / temperature
    V = z.shape[-1]
    if top_k is not None and 0 < top_k < V:
        kth = np.partition(z, V - top_k, axis=-1)[:, V - top_k][:, None]   # (B, 1) k-th largest
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)                                   # numerical care
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # keep a token while the mass before it is < top_p: the most likely token always stays
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(size=(probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), V - 1).astype(np.int64)


def generate_tokens(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, rng=None, use_cache: bool = True):
    """Yield max_new_tokens arrays of shape (B,): the sampled tokens, one step at a time."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must have shape (B, T) with T >= 1, got {idx.shape}")
    block = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        seq = idx
        cache = model.new_kv_cache(idx.shape[0]) if use_cache else None
        logits = _window_logits(model, seq, cache)
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, rng)
            yield nxt
            if step == max_new_tokens - 1:
                break
            seq = np.concatenate([seq, nxt[:, None]], axis=1)
            if cache is not None and cache.length < block:
                logits = model.forward_cached(nxt[:, None], cache)[:, -1]
            else:
                logits = _window_logits(model, seq, cache)
    finally:
        model.training = was_training


def _window_logits(model, seq, cache):
    """Last-position logits of the last block_size tokens, refilling the cache if there is one."""
    window = seq[:, -model.config.block_size:]
    if cache is None:
        return model.forward(window)[:, -1]
    cache.length = 0
    return model.forward_cached(window, cache)[:, -1]


class StreamDecoder:
    """Turns a growing list of token ids into text increments, holding back a partial UTF-8
    character (byte-level BPE can split one across tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []     # ids not yet written out

    def push(self, token: int) -> str:
        """Text for the ids so far, once it ends on a whole character; only the ids held since
        the last piece are decoded, so streaming stays linear in the output's length."""
        self.pending.append(int(token))
        text = self.tokenizer.decode(np.array(self.pending, dtype=np.int64))
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text = self.tokenizer.decode(np.array(self.pending, dtype=np.int64)) if self.pending else ""
        self.pending = []
        return text


# --------------------------------------------------------------------------------- the command

def add_arguments(parser) -> None:
    parser.add_argument("--out_dir", default="out",
                        help="training output folder (its best/ or latest/ checkpoint is used), "
                             "or a checkpoint folder itself (default: out)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help='text to continue (default: a newline, "\\n")')
    src.add_argument("--prompt_file", default=None, help="read the prompt from this UTF-8 file")
    parser.add_argument("--max_new_tokens", type=int, default=500, help="tokens to generate per sample (default: 500)")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy (default: 0.8)")
    parser.add_argument("--top_k", type=int, default=200, help="sample from the k most likely tokens; 0 turns it off (default: 200)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling: keep the smallest set of tokens with mass >= p")
    parser.add_argument("--num_samples", type=int, default=1, help="how many samples to draw (default: 1)")
    parser.add_argument("--seed", type=int, default=1337, help="random seed (default: 1337)")
    parser.add_argument("--no_cache", action="store_true", help="recompute the whole window for every token (slow; for checking)")


def main(args) -> int:
    from numformer.errors import UsageError

    if args.max_new_tokens < 0:
        raise UsageError(f"--max_new_tokens must be >= 0, got {args.max_new_tokens}")
    if not (0 <= args.temperature < float("inf")):
        raise UsageError(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 0:
        raise UsageError(f"--top_k must be >= 0, got {args.top_k}")
    if args.top_p is not None and not (0.0 < args.top_p <= 1.0):
        raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.num_samples < 1:
        raise UsageError(f"--num_samples must be >= 1, got {args.num_samples}")

    model = load_for_sampling(args.out_dir)
    tok = model.tokenizer
    if tok is None:
        raise UsageError(f"{args.out_dir}: the checkpoint has no tokenizer, so text cannot be encoded")
    prompt = _read_prompt(args)
    ids = tok.encode(prompt)              # DataError naming an unknown character
    if len(ids) == 0:
        raise UsageError("the prompt encodes to no tokens; give at least one character")
    rng = np.random.default_rng(args.seed)
    out = sys.stdout
    for s in range(args.num_samples):
        if s:
            out.write("\n---------------\n")
        out.write(prompt)
        dec = StreamDecoder(tok)
        for nxt in generate_tokens(model, ids[None, :], args.max_new_tokens, temperature=args.temperature,
                                   top_k=args.top_k or None, top_p=args.top_p, rng=rng,
                                   use_cache=not args.no_cache):
            piece = dec.push(nxt[0])
            if piece:
                out.write(piece)
                out.flush()
        out.write(dec.flush() + "\n")
        out.flush()
    return 0


def load_for_sampling(out_dir):
    """The checkpoint to sample from: out_dir itself if it is a checkpoint, else out_dir/best,
    else out_dir/latest."""
    from pathlib import Path

    from numformer.errors import CheckpointError
    from numformer.model.gpt import GPT

    root = Path(out_dir)
    if root.is_file():
        return GPT.load(root)         # load_checkpoint explains why a file (a pickle, say) is refused
    for cand in (root, root / "best", root / "latest"):
        if (cand / "config.json").is_file():
            return GPT.load(cand)
    if not root.exists():
        raise CheckpointError(f"{root}: no such folder; train first (numformer train --out_dir {root})")
    raise CheckpointError(f"{root}: no checkpoint found (looked for {root}/best and {root}/latest)")


def _read_prompt(args) -> str:
    from numformer.errors import DataError

    if args.prompt_file is not None:
        from pathlib import Path

        path = Path(args.prompt_file)
        if not path.is_file():
            raise DataError(f"{path}: prompt file not found")
        try:
            return path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    return "\n" if args.prompt is None else args.prompt
