"""The loss of a text under a model, every token after the first scored once (`numformer eval`).

A model sees at most block_size (T) tokens, so a longer text is read in windows. Window k starts
at token b = k·S (S, the stride, 1 <= S <= T) and feeds tokens b .. b+T−1, which predict tokens
b+1 .. b+T. Of those it scores only the ones no earlier window scored:

    S = T   windows side by side: every prediction of every window counts, and the first
            prediction of each window has no context before its own first token;
    S < T   windows overlap by T−S tokens: a window scores its last S predictions, each with at
            least T−S tokens of context (S = 1: every token with the full context, T times the cost).

The last window stops at the end of the text. With N tokens, N−1 are scored:

    loss          = (1/(N−1)) Σ −ln p(token_i | its context)     nats per token
    perplexity    = exp(loss)
    bits_per_byte = Σ −log2 p(token_i | ...) / (UTF-8 bytes of the whole text)

Bits per byte divides by the text's size, not the token count, so it compares models with
different tokenizers (the first token, which is never predicted, is a few bytes of a long text).

The windows run in batches through numformer.parallel.threads.loss_and_grad with backward=False,
as evaluation during training does: targets a window does not score are −1 (ignored), and each
batch's mean loss times its scored count gives its sum.
"""

from __future__ import annotations

import math

import numpy as np

from numformer.errors import DataError, UsageError


def windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) of every window over n_tokens tokens: the inputs are tokens
    begin .. end−1, the targets begin+1 .. end, of which those from token `first` on are scored."""
    if not 1 <= stride <= block_size:
        raise UsageError(f"stride must be between 1 and block_size ({block_size}), got {stride}")
    out, scored = [], 0                  # tokens 1 .. scored have been scored
    begin = 0
    while scored < n_tokens - 1:
        end = min(begin + block_size, n_tokens - 1)
        out.append((begin, end, scored + 1))
        scored = end
        begin += stride
    return out


def evaluate_ids(model, ids, *, stride: int | None = None, threads: int = 1, batch_windows: int = 8) -> tuple[float, int]:
    """(Σ −ln p over the scored tokens, how many were scored) of token ids (N,) under model."""
    from numformer.parallel.threads import loss_and_grad

    T = model.config.block_size
    ids = np.asarray(ids, dtype=np.int64)
    plan = windows(len(ids), T, stride or T)
    total, counted = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        # windows of one length go together (all but possibly the last); a batch's logits are
        # (B, T, V) floats, kept to about 64 MiB
        per_batch = max(1, min(batch_windows, (1 << 24) // max(1, T * model.config.vocab_size)))
        groups = {}
        for w in plan:
            groups.setdefault(w[1] - w[0], []).append(w)
        for length, ws in groups.items():
            for i in range(0, len(ws), per_batch):
                chunk = ws[i:i + per_batch]
                x = np.stack([ids[b:e] for b, e, _ in chunk])                     # (B, length)
                y = np.stack([ids[b + 1:e + 1] for b, e, _ in chunk])             # (B, length)
                for row, (b, _, first) in zip(y, chunk):
                    row[:first - (b + 1)] = -1                                    # scored by an earlier window
                n = int(np.count_nonzero(y != -1))
                loss = loss_and_grad(model, x, y, threads=threads, backward=False)
                total += loss * n
                counted += n
    finally:
        model.train() if was_training else model.eval()
    return total, counted


def evaluate_text(model, text: str, *, stride: int | None = None, threads: int = 1, source: str = "text") -> dict:
    """{"loss", "perplexity", "bits_per_byte", "tokens"} of `text` under model (see above); tokens
    is the text's token count N, of which N−1 are scored.
    DataError (one line) for a text that is empty or shorter than two tokens."""
    if not text:
        raise DataError(f"{source} is empty; there is nothing to evaluate")
    if model.tokenizer is None:
        raise DataError("the checkpoint has no tokenizer, so the text cannot be encoded")
    ids = model.tokenizer.encode(text)          # DataError naming a character the vocabulary lacks
    if len(ids) < 2:
        raise DataError(f"{source} is {len(ids)} token long; evaluation needs at least two (the first is only "
                        f"context for the second)")
    total, counted = evaluate_ids(model, ids, stride=stride, threads=threads)
    loss = total / counted
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "bits_per_byte": total / math.log(2) / len(text.encode("utf-8")), "tokens": len(ids)}
