"""From text to training batches: tokenize once, cache the ids, split 90/10, draw (x, y) blocks.

`prepare(corpus, tokenizer="char")` builds (or reuses) the tokenizer, encodes the whole corpus,
and returns `(train_ids, val_ids, tokenizer)`: the first 90% of the tokens for training, the last
10% for validation. The corpus (a string, or a numformer.data.corpus.Corpus) is read in pieces,
never whole, in up to three passes: one to hash it, and on a cache miss one to build the
vocabulary (the set of characters, or BPE merges trained from the pieces) and one to encode it
into the cache file. The ids are cached on disk, so a second run on the same text starts at once,
and training reads them from that file one window at a time (`TokenFile`), so memory does not
grow with the corpus:

- key: SHA-256 of the corpus text (UTF-8) together with the tokenizer spec: its type, and for
  BPE the vocab_size asked for and the `tokenizers` version (or, for a tokenizer passed in, a
  SHA-256 of its JSON), and CACHE_FORMAT;
- files, in `cache_dir` (default: $NUMFORMER_CACHE, else ~/.cache/numformer):
  `tokens-<key>.bin` (all ids, little-endian, in the smallest unsigned type that holds the
  vocabulary: uint8 when V <= 256, uint16 when V <= 65536, else uint32) and `tokens-<key>.json`,
  the record that vouches for them: the cache format, the text's SHA-256 and the tokenizer spec
  the key was made from, the tokenizer's JSON, the dtype, the count and a SHA-256 of the ids;
- an entry is used only if its record matches the key it is filed under (the same cache format,
  text SHA-256 and tokenizer spec) and the ids match their count and SHA-256. Anything else is
  stale and rebuilt in place, with a one-line note on stderr: another corpus's entry copied over
  this one, an entry of another tokenizer, a record that is damaged, not JSON or nested too
  deeply, ids cut short or changed. Ids without a record (a writer between its two renames) are
  rebuilt without a note. A cache entry is never an error;
- files are written by numformer.checkpoint.replace_file (a temporary file of this process in the
  same folder, then a rename), the ids first and then their record, so processes that start
  together (MPI ranks) never read half a file; a folder that cannot be written just means no
  cache (the ids are then held in memory).

A `TokenFile` holds the cache file open and reads each window with `os.pread`: batches are the
same as from an array in memory, the pages read stay in the operating system's file cache rather
than in the process, and a file that another program cuts short while a run reads it is a
DataError naming it (through a memory map, the read would kill the process with SIGBUS). The
ids checked against their SHA-256 are those of the open file, so a file swapped in later is
never read.

`get_batch(ids, block_size, batch_size, rng)` draws `batch_size` offsets with
`rng.integers(0, len(ids) - block_size, size=batch_size)` and returns int64 arrays x, y of shape
(B, T) with y[b, t] = ids[offset_b + t + 1], the next token after x[b, t].
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np

from numformer.data.corpus import Corpus
from numformer.data.tokenizer import BPETokenizer, CharTokenizer, _codes, _hf, from_json, safe_pieces
from numformer.errors import DataError, NumformerError, UsageError

TRAIN_FRACTION = 0.9
DEFAULT_BPE_VOCAB_SIZE = 1024
CACHE_FORMAT = 2  # 2: raw little-endian ids in tokens-<key>.bin


# ----------------------------------------------------------------------------- the cache folder


def default_cache_dir() -> Path:
    """$NUMFORMER_CACHE if set, else ~/.cache/numformer."""
    env = os.environ.get("NUMFORMER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "numformer"


def _write_cache_file(path: Path, data) -> bool:
    """Write `data` (bytes, or an iterable of bytes) to `path` with numformer's atomic writer.

    Returns False (with a one-line note on stderr) when the folder cannot be written: a cache is never required.
    Any other error raised while `data` is produced (bad input found while writing) propagates,
    and the writer leaves no temporary file.
    """
    from numformer import checkpoint

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.replace_file(path, data)
        return True
    except OSError as e:
        _note(f"could not write the token cache file {path} ({e.strerror or type(e).__name__}); training goes on without it")
        return False


def _note(message: str) -> None:
    """One line on stderr about the cache: numformer's own files, so a note and not an error."""
    print(f"numformer: note: {message}", file=sys.stderr, flush=True)


def read_cached_text(path: Path) -> str | None:
    """A cached text file, or None if it is missing or unreadable (then the caller rebuilds it)."""
    try:
        data = path.read_bytes()
        body, _, tail = data.rpartition(b"\n#sha256:")
        if hashlib.sha256(body).hexdigest().encode() != tail.strip():
            return None
        return body.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def write_cached_text(path: Path, text: str) -> None:
    """Cache `text` at `path` atomically, with a checksum line so damage is noticed on reading."""
    body = text.encode("utf-8")
    tail = b"\n#sha256:" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    _write_cache_file(path, body + tail)


# ----------------------------------------------------------------------------- the ids on disk


class TokenFile:
    """Token ids in a file, read a window at a time: a range of `len(self)` ids of `dtype`.

    `ids[a:b]` is the range's part (nothing is read), `windows(offsets, length)` reads one row per
    offset, `np.asarray(ids)` reads the whole range (for small ones). Reads use os.pread on a file
    held open; a read that comes back short (the file was cut while in use) raises DataError.
    Pickling (an MPI broadcast) sends the ids themselves, as an ndarray: other hosts need no file.
    """

    def __init__(self, file, path, dtype, start: int, length: int):
        self._file = file            # an open, unbuffered binary file, shared by the parts
        self.path = str(path)
        self.dtype = np.dtype(dtype)
        self._start = start          # in ids, from the start of the file
        self._length = length

    @property
    def shape(self) -> tuple[int]:
        return (self._length,)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("a TokenFile takes slices; read ids with windows() or np.asarray()")
        begin, end, step = key.indices(self._length)
        if step != 1:
            raise ValueError("a TokenFile takes slices with step 1")
        return TokenFile(self._file, self.path, self.dtype, self._start + begin, max(0, end - begin))

    def read(self, begin: int, end: int) -> np.ndarray:
        """Ids begin .. end−1 of the range, (end − begin,) of `dtype`; DataError if the file is short."""
        if not 0 <= begin <= end <= self._length:
            raise IndexError(f"ids {begin}..{end} are outside a range of {self._length}")
        size, offset = (end - begin) * self.dtype.itemsize, (self._start + begin) * self.dtype.itemsize
        fd = self._file.fileno()
        data = os.pread(fd, size, offset)
        while len(data) < size:        # a regular file reads whole unless it ends first
            more = os.pread(fd, size - len(data), offset + len(data))
            if not more:
                have = os.fstat(fd).st_size
                raise DataError(
                    f"{self.path}: the token cache file was cut short while this process read it "
                    f"({have:,} bytes left, {offset + size:,} needed): another program truncated it; "
                    f"run again and the cache entry is rebuilt"
                )
            data += more
        return np.frombuffer(data, dtype=self.dtype)

    def windows(self, offsets, length: int) -> np.ndarray:
        """(len(offsets), length): row b holds ids offsets[b] .. offsets[b] + length − 1."""
        out = np.empty((len(offsets), length), dtype=self.dtype)
        for row, begin in zip(out, offsets):
            row[...] = self.read(int(begin), int(begin) + length)
        return out

    def __array__(self, dtype=None, copy=None):
        ids = self.read(0, self._length)
        return ids if dtype is None else ids.astype(dtype)

    def __reduce__(self):
        return self.read(0, self._length).__reduce__()

    def __repr__(self):
        return f"TokenFile({self.path!r}, dtype={self.dtype}, ids {self._start}..{self._start + self._length})"


def _open_ids(path: Path):
    """The ids file opened for reading (unbuffered), or None if it is not there or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))   # a FIFO planted here never blocks
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb", buffering=0)


def _sha256_of(file) -> str:
    sha = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(1 << 20):
        sha.update(chunk)
    return sha.hexdigest()


# ----------------------------------------------------------------------------- prepare


def id_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds every id of a vocabulary of vocab_size."""
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32


def _file_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(id_dtype(vocab_size)).newbyteorder("<")  # the cache file is little-endian


def _spec(tokenizer, vocab_size) -> str:
    if isinstance(tokenizer, (CharTokenizer, BPETokenizer)):
        return "given:" + _json_sha256(tokenizer.to_json())
    if tokenizer == "char":
        return "char"
    return f"bpe:{vocab_size}:tokenizers-{_hf().__version__}"


def _json_sha256(tokenizer_json: str) -> str:
    return hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()


class _Stale(Exception):
    """A cache entry that is there but cannot be used; the message says why."""


def _load_entry(ids_path: Path, meta_path: Path, text_sha: str, spec: str):
    """(ids as a TokenFile, tokenizer) from the cache entry; None if it has no record (a miss);
    _Stale if the record does not match the key (text, tokenizer spec, format) or the ids do not
    match the record. The ids are checked against their SHA-256 on the file that is then read."""
    from numformer.checkpoint import TOKENIZER_LIMIT, read_json

    if not os.path.lexists(meta_path):
        return None
    try:
        # read only if a regular file (a FIFO would block, a device never end) of a tokenizer's size
        meta = read_json(meta_path, limit=TOKENIZER_LIMIT)
    except NumformerError as e:      # missing, not a regular file, too large, not JSON, not an object
        raise _Stale(f"is not a record numformer can read ({str(e).removeprefix(f'{meta_path}: ')})") from None
    if meta.get("cache_format") != CACHE_FORMAT:
        raise _Stale("has another cache format")
    if meta.get("text_sha256") != text_sha:
        raise _Stale("was made from another text")
    if meta.get("spec") != spec:
        raise _Stale("was made with another tokenizer")
    try:
        tokenizer_json = meta["tokenizer"]
        if spec.startswith("given:") and _json_sha256(tokenizer_json) != spec.removeprefix("given:"):
            raise _Stale("was made with another tokenizer")
        tok = from_json(tokenizer_json)
        dtype, n = np.dtype(meta["dtype"]), meta["n_tokens"]
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError, NumformerError):
        raise _Stale("is damaged (a field is missing or unreadable)") from None
    if dtype != _file_dtype(tok.vocab_size) or type(n) is not int or n < 1:
        raise _Stale("is damaged (its dtype or count does not fit its tokenizer)")
    file = _open_ids(ids_path)
    if file is None:
        raise _Stale(f"has no ids file {ids_path.name}")
    try:
        whole = os.fstat(file.fileno()).st_size == n * dtype.itemsize and _sha256_of(file) == meta.get("ids_sha256")
    except OSError as e:
        whole, why = False, f"cannot read its ids in {ids_path.name} ({e.strerror})"
    else:
        why = f"does not match its ids in {ids_path.name} (cut short or changed)"
    if not whole:
        file.close()
        raise _Stale(why)
    return TokenFile(file, ids_path, dtype, 0, n), tok


def _char_vocabulary(corpus: Corpus) -> CharTokenizer:
    """The sorted distinct characters of the corpus, found one piece at a time."""
    seen = np.zeros(0x110000, dtype=bool)  # one flag per Unicode code point
    for piece in corpus.pieces():
        seen[_codes(piece)] = True
    return CharTokenizer([chr(c) for c in np.flatnonzero(seen)])


def encode_pieces(corpus: Corpus, tok, dtype):
    """The corpus's ids, piece by piece, as arrays of `dtype` (BPE pieces regrouped at safe cuts,
    so the ids are those of the whole text); training and `numformer eval` both encode this way.
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
        for piece in safe_pieces(corpus.pieces()):
            yield tok.encode(piece).astype(dtype)


def prepare(text: str | Corpus, tokenizer="char", vocab_size: int | None = None, cache_dir=None):
    """Tokenize a corpus (cached) and split it 90/10: returns (train_ids, val_ids, tokenizer).

    text: a string, or a Corpus (numformer.data.corpus.open_corpus), which is read in pieces and
    never held whole. tokenizer: "char", "bpe" (trained on the text with `vocab_size` tokens,
    default DEFAULT_BPE_VOCAB_SIZE), or an existing CharTokenizer/BPETokenizer (e.g. the one a
    checkpoint carries, when resuming), used as it is. The ids are of the smallest unsigned type
    that holds the vocabulary (id_dtype): two TokenFile ranges of the cache file (in-memory
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
    spec = _spec(tokenizer, vocab_size)
    key = hashlib.sha256(f"{CACHE_FORMAT}\0{text_sha}\0{spec}".encode()).hexdigest()[:32]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ids_path = folder / f"tokens-{key}.bin"
    meta_path = folder / f"tokens-{key}.json"

    try:
        entry = _load_entry(ids_path, meta_path, text_sha, spec)
    except _Stale as e:
        _note(f"the token cache entry {meta_path} {e}: it is stale and is rebuilt")
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
        dtype = _file_dtype(tok.vocab_size)
        ids_sha, counted = hashlib.sha256(), [0]

        def parts():
            for part in encode_pieces(corpus, tok, dtype):
                data = part.tobytes()
                ids_sha.update(data)
                counted[0] += len(part)
                yield data

        ids = None
        if _write_cache_file(ids_path, parts()):
            meta = {
                "cache_format": CACHE_FORMAT,
                "text_sha256": text_sha,
                "spec": spec,
                "dtype": dtype.str,
                "n_tokens": counted[0],
                "ids_sha256": ids_sha.hexdigest(),
                "tokenizer": tok.to_json(),
            }
            # ids first, then the record that vouches for them: a reader that sees the new record
            # with another writer's ids notices the checksum and rebuilds, instead of trusting them.
            _write_cache_file(meta_path, json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            file = _open_ids(ids_path)
            if file is not None:
                ids = TokenFile(file, ids_path, dtype, 0, counted[0])
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
