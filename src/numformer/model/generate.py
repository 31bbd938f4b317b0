"""Sampling from a GPT with a KV cache.

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


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, rng=None, use_cache: bool = True) -> np.ndarray:
    """idx (B, T) extended by max_new_tokens sampled tokens: (B, T + max_new_tokens)."""
    idx = np.asarray(idx, dtype=np.int64)
    new = list(generate_tokens(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, rng=rng, use_cache=use_cache))
    if not new:
        return idx
    return np.concatenate([idx, np.stack(new, axis=1)], axis=1)
