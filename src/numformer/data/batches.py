"""From text to training batches: tokenize once, cache the ids, split 90/10, draw (x, y) blocks.

`prepare(corpus, tokenizer="char")` builds (or reuses) the tokenizer, encodes the whole corpus,
and returns `(train_ids, val_ids, tokenizer)`: the first 90% of the tokens for training, the last
10% for validation. The corpus (a string, or a numformer.data.corpus.Corpus) is read in pieces,
never whole, in up to three passes: one to hash it, and on a cache miss one to build the
vocabulary (the set of characters, or BPE merges trained from the pieces) and one to encode it
into the cache file. The ids are cached on disk (numformer.data.cache), so a second run on the
same text starts at once, and training reads them from that file one window at a time
(`TokenFile`), so memory does not grow with the corpus. The cache key is a SHA-256 of the corpus
text (UTF-8) together with the tokenizer spec: its type, and for BPE the vocab_size asked for and
the `tokenizers` version (or, for a tokenizer passed in, a SHA-256 of its JSON), and the cache
format. An entry that cannot be used is stale and rebuilt in place, with a one-line note on
stderr; a cache entry is never an error, and a folder that cannot be written just means no cache
(the ids are then held in memory).

`get_batch(ids, block_size, batch_size, rng)` draws `batch_size` offsets with
`rng.integers(0, len(ids) - block_size, size=batch_size)` and returns int64 arrays x, y of shape
(B, T) with y[b, t] = ids[offset_b + t + 1], the next token after x[b, t].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from numformer.data import cache
from numformer.data.cache import TokenFile
from numformer.data.corpus import Corpus
from numformer.data.tokenizer import BPETokenizer, CharTokenizer, code_points
from numformer.errors import DataError, UsageError

TRAIN_FRACTION = 0.9
DEFAULT_BPE_VOCAB_SIZE = 1024


# ----------------------------------------------------------------------------- prepare


def _char_vocabulary(corpus: Corpus) -> CharTokenizer:
    """The sorted distinct characters of the corpus, found one piece at a time."""
    seen = np.zeros(0x110000, dtype=bool)  # one flag per Unicode code point
    for piece in corpus.pieces():
        seen[code_points(piece)] = True
    return CharTokenizer([chr(c) for c in np.flatnonzero(seen)])


def encode_pieces(corpus: Corpus, tok, dtype):
    """The corpus's ids, piece by piece, as arrays of `dtype` (BPE pieces regrouped at safe cuts,
    so the ids are those of the whole text: BPETokenizer.encode_stream); training and
    `numformer eval` both encode this way.
    An unknown character is a DataError naming the corpus and where in it."""
    if isinstance(tok, CharTokenizer):
        start = 0
        for piece in corpus.pieces():
            try:
                ids = tok.encode(piece)  # (n,)
            except DataError as e:  # the position it names is inside this piece
                raise DataError(f"{corpus.name}, in the characters from {start:,} on: {e}") from None
            start += len(piece)
            yield ids.astype(dtype)
    else:
        for ids in tok.encode_stream(corpus.pieces()):
            yield ids.astype(dtype)


def prepare(text: str | Corpus, tokenizer="char", vocab_size: int | None = None, cache_dir=None):
    """Tokenize a corpus (cached) and split it 90/10: returns (train_ids, val_ids, tokenizer).

    text: a string, or a Corpus (numformer.data.corpus.open_corpus), which is read in pieces and
    never held whole. tokenizer: "char", "bpe" (trained on the text with `vocab_size` tokens,
    default DEFAULT_BPE_VOCAB_SIZE), or an existing CharTokenizer/BPETokenizer (e.g. the one a
    checkpoint carries, when resuming), used as it is. The ids are of the smallest unsigned type
    that holds the vocabulary (cache.id_dtype): two TokenFile ranges of the cache file (in-memory
    arrays only when the cache folder cannot be written).
    """
    if isinstance(tokenizer, (CharTokenizer, BPETokenizer)):
        if vocab_size is not None and vocab_size != tokenizer.vocab_size:
            raise UsageError(f"vocab_size {vocab_size} does not match the given tokenizer's {tokenizer.vocab_size}")
    elif tokenizer == "char":
        if vocab_size is not None:
            raise UsageError("vocab_size applies only to the BPE tokenizer (tokenizer 'bpe'); the char vocabulary is the corpus's characters")
    elif tokenizer == "bpe":
        vocab_size = DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size
    else:
        raise UsageError(f"unknown tokenizer {tokenizer!r}: use 'char' or 'bpe'")
    corpus = text if isinstance(text, Corpus) else Corpus.of_text(text)

    # pass 1: the key (reading the corpus also checks it: UTF-8, not only whitespace)
    sha, n_chars = hashlib.sha256(), 0
    for piece in corpus.pieces():
        sha.update(piece.encode("utf-8", "surrogatepass"))
        n_chars += len(piece)
    if not n_chars:
        raise DataError("the text is empty: nothing to train on")
    text_sha = sha.hexdigest()
    spec = cache.tokenizer_spec(tokenizer, vocab_size)
    folder = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
    ids_path, meta_path = cache.entry_paths(folder, text_sha, spec)

    try:
        entry = cache.load_entry(ids_path, meta_path, text_sha, spec)
    except cache.Stale as e:
        cache.note(f"the token cache entry {meta_path} {e}: it is stale and is rebuilt")
        entry = None
    if entry is not None:
        ids, tok = entry
    else:
        # pass 2: the vocabulary (char: the corpus's characters; BPE: merges learned on it)
        if tokenizer == "char":
            tok = _char_vocabulary(corpus)
        elif tokenizer == "bpe":
            tok = BPETokenizer.train(corpus.pieces(), vocab_size)
        else:
            tok = tokenizer
        # pass 3: the ids, written piece by piece to the cache file
        dtype = cache.file_dtype(tok.vocab_size)
        ids = cache.write_entry(ids_path, meta_path, text_sha, spec, tok, encode_pieces(corpus, tok, dtype))
        if ids is None:  # no cache folder: the ids in memory
            ids = np.concatenate(list(encode_pieces(corpus, tok, dtype)))
    if isinstance(tokenizer, (CharTokenizer, BPETokenizer)):
        tok = tokenizer
    n_train = int(len(ids) * TRAIN_FRACTION)
    return ids[:n_train], ids[n_train:], tok


# ----------------------------------------------------------------------------- batches


def _needed(block_size: int) -> int:
    # An offset in [0, N - T) and a target one token past the block: N >= T + 1.
    return block_size + 1


def check_length(train_ids, val_ids, block_size: int) -> None:
    """Raise DataError (one line, both numbers) if either split is too short for block_size."""
    for split, ids in (("train", train_ids), ("val", val_ids)):
        if len(ids) < _needed(block_size):
            raise DataError(
                f"the corpus is too short for block_size {block_size}: the {split} split has "
                f"{len(ids)} tokens and needs at least {_needed(block_size)} "
                f"(the whole corpus is {len(train_ids) + len(val_ids)} tokens, split 90/10); "
                "use a longer text or a smaller block_size"
            )


def get_batch(ids, block_size: int, batch_size: int, rng: np.random.Generator):
    """x, y of shape (B, T), int64, with y the next token after each x; offsets drawn from rng."""
    n = len(ids)
    if n < _needed(block_size):
        raise DataError(
            f"this split has {n} tokens but block_size {block_size} needs at least "
            f"{_needed(block_size)}; use a longer text or a smaller block_size"
        )
    ix = rng.integers(0, n - block_size, size=batch_size)  # (B,) block offsets
    if isinstance(ids, TokenFile):
        w = ids.windows(ix, block_size + 1)  # (B, T+1), read from the cache file
    else:
        w = np.asarray(ids)[ix[:, None] + np.arange(block_size + 1)]  # (B, T+1)
    x = np.ascontiguousarray(w[:, :-1], dtype=np.int64)  # (B, T)
    y = np.ascontiguousarray(w[:, 1:], dtype=np.int64)  # (B, T)
    return x, y
