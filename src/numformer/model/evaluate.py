"""The loss of a text under a model, every token after the first scored once (`numformer eval`).

A model sees at most block_size (T) tokens, so a longer text is read in windows. Window k starts
at token b = k·S (S, the stride, 1 <= S <= T) and feeds tokens b .. b+T−1, which predict tokens
b+1 .. b+T. Of those it scores only the ones no earlier window scored:

    S = T   windows side by side: every prediction of every window counts, and the first
            prediction of each window has no context before its own first token;
    S < T   windows overlap by T−S tokens: a window scores its last S predictions, each with at
            least T−S tokens of context (S = 1: every token with the full context, T times the cost).

The last window stops at the end of the text. With N tokens, N−1 are scored (all N when the
tokenizer puts a BOS before a text, as a Llama's does: the text is scored as transformers scores
tokenizer(text), BOS first, so its first token is predicted too):

    loss          = (1/(N−1)) Σ −ln p(token_i | its context)     nats per token
    perplexity    = exp(loss)
    bits_per_byte = Σ −log2 p(token_i | ...) / (UTF-8 bytes of the whole text)

Bits per byte divides by the text's size, not the token count, so it compares models with
different tokenizers (the first token, which is never predicted, is a few bytes of a long text).

The windows run in batches through numformer.parallel.threads.loss_and_grad with backward=False,
as evaluation during training does: targets a window does not score are −1 (ignored), and each
batch's mean loss times its scored count gives its sum. The windows of T tokens go per_batch at
a time, in order, then the last window if it is shorter.

A text is streamed, never held whole (`evaluate_corpus`): it is read in pieces and encoded as
training reads and encodes its corpus (numformer.data.corpus.open_corpus, batches.encode_pieces),
the ids kept in the smallest unsigned type that holds the vocabulary, and only the ids that the
windows not yet scored need stay in memory (`window_batches`). The batches, and so the loss, are
those of the whole text's ids at once. A loss that is not finite (a model whose weights are
finite but whose computation overflows float32) is an error, not a result.
"""

from __future__ import annotations

import math

import numpy as np

from numformer.data.batches import encode_pieces
from numformer.data.cache import id_dtype
from numformer.data.corpus import Corpus
from numformer.errors import CheckpointError, DataError, UsageError
from numformer.parallel.threads import loss_and_grad


def windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) of every window over n_tokens tokens: the inputs are tokens
    begin .. end−1, the targets begin+1 .. end, of which those from token `first` on are scored."""
    _check_stride(block_size, stride)
    out, scored = [], 0                  # tokens 1 .. scored have been scored
    begin = 0
    while scored < n_tokens - 1:
        end = min(begin + block_size, n_tokens - 1)
        out.append((begin, end, scored + 1))
        scored = end
        begin += stride
    return out


def _check_stride(block_size: int, stride: int) -> None:
    if not 1 <= stride <= block_size:
        raise UsageError(f"stride must be between 1 and block_size ({block_size}), got {stride}")


def window_batches(parts, block_size: int, stride: int, per_batch: int):
    """The windows of `windows(N, block_size, stride)` over token ids that arrive in parts (1-D
    arrays; N is known only at the end), as int64 batches (x, y) of shape (B, length): the windows
    of block_size tokens per_batch at a time, then the last window if it is shorter. In y, the
    targets that an earlier window scored are −1. Only the ids from the first window not yet
    yielded on are kept."""
    T, S = block_size, stride
    _check_stride(T, S)
    buf, base = None, 0                              # buf holds tokens base .. base + len(buf) − 1
    n, begin, scored = 0, 0, 0                       # tokens seen; the next window's begin; 1 .. scored scored
    pending = []                                     # full windows (begin, end, first) not yet yielded

    def batch(ws):
        x = np.stack([buf[b - base:e - base] for b, e, _ in ws]).astype(np.int64)             # (B, length)
        y = np.stack([buf[b + 1 - base:e + 1 - base] for b, e, _ in ws]).astype(np.int64)     # (B, length)
        for row, (b, _, first) in zip(y, ws):
            row[:first - (b + 1)] = -1                                                        # scored by an earlier window
        return x, y

    for part in parts:
        keep = pending[0][0] if pending else begin   # the first token a window still needs
        buf = part if buf is None else np.concatenate([buf[keep - base:], part])   # the parts' own dtype
        base, n = keep, n + len(part)
        while begin + T <= n - 1:                    # a full window: its last target is already here
            pending.append((begin, begin + T, scored + 1))
            scored, begin = begin + T, begin + S
            if len(pending) == per_batch:
                yield batch(pending)
                pending = []
    if pending:
        yield batch(pending)
    if scored < n - 1:                               # the last window reaches the end of the text
        yield batch([(begin, n - 1, scored + 1)])


def _per_batch(model, batch_windows: int) -> int:
    # a batch's logits are (B, T, V) floats, kept to about 64 MiB
    T, V = model.config.block_size, model.config.vocab_size
    return max(1, min(batch_windows, (1 << 24) // max(1, T * V)))


def _score(model, batches, threads: int, source: str) -> tuple[float, int]:
    """(Σ −ln p over the scored tokens, how many were scored) of the batches of window_batches."""
    total, counted = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            n = int(np.count_nonzero(y != -1))
            with np.errstate(over="ignore", invalid="ignore"):    # a loss that is not finite is said below
                loss = loss_and_grad(model, x, y, threads=threads, backward=False)
            if not math.isfinite(loss):
                raise CheckpointError(
                    f"the loss on {source} is not finite ({loss}) for tokens {counted + 1:,} to {counted + n:,}: "
                    f"the model's weights are finite but its computation overflows float32, so it has "
                    f"no loss to report")
            total += loss * n
            counted += n
    finally:
        model.train() if was_training else model.eval()
    return total, counted


def evaluate_ids(model, ids, *, stride: int | None = None, threads: int = 1, batch_windows: int = 8,
                 source: str = "the text") -> tuple[float, int]:
    """(Σ −ln p over the scored tokens, how many were scored) of token ids (N,) under model."""
    T = model.config.block_size
    batches = window_batches([np.asarray(ids)], T, stride or T, _per_batch(model, batch_windows))
    return _score(model, batches, threads, source)


def evaluate_corpus(model, corpus, *, stride: int | None = None, threads: int = 1) -> dict:
    """{"loss", "perplexity", "bits_per_byte", "tokens"} of a corpus (numformer.data.corpus:
    open_corpus, or Corpus.of_text) under model, streamed (see above); tokens is the text's token
    count N, of which N−1 are scored (N behind a BOS: tokenizer.special_prefix). DataError (one line) for a text shorter than two tokens,
    CheckpointError for a loss that is not finite."""
    if model.tokenizer is None:
        raise DataError("the checkpoint has no tokenizer, so the text cannot be encoded")
    tok, T = model.tokenizer, model.config.block_size
    n_bytes, n_tokens = 0, 0

    def pieces():
        nonlocal n_bytes
        for piece in corpus.pieces():
            n_bytes += len(piece.encode("utf-8", "surrogatepass"))
            yield piece

    def parts():
        nonlocal n_tokens
        # transformers' tokenizer(text) puts the BOS a Llama was trained behind before the text
        yield tok.special_prefix.astype(id_dtype(tok.vocab_size))
        for part in encode_pieces(Corpus(corpus.name, pieces), tok, id_dtype(tok.vocab_size)):
            n_tokens += len(part)          # DataError above naming a character the vocabulary lacks
            yield part

    total, counted = _score(model, window_batches(parts(), T, stride or T, _per_batch(model, 8)), threads,
                            corpus.name)
    if n_tokens + len(tok.special_prefix) < 2:
        raise DataError(f"{corpus.name} is {n_tokens} token long; evaluation needs at least two (the first is "
                        f"only context for the second)")
    loss = total / counted
    return {"loss": loss, "perplexity": math.exp(loss) if loss < math.log(np.finfo(np.float64).max) else math.inf,
            "bits_per_byte": total / math.log(2) / n_bytes, "tokens": n_tokens}


def evaluate_text(model, text: str, *, stride: int | None = None, threads: int = 1, source: str = "text") -> dict:
    """evaluate_corpus of a string, taken as it is (`source` names it in messages).
    DataError (one line) for a text that is empty or shorter than two tokens."""
    if not text:
        raise DataError(f"{source} is empty; there is nothing to evaluate")
    return evaluate_corpus(model, Corpus.of_text(text, source), stride=stride, threads=threads)
