"""The cache folder: what numformer keeps between runs, so that a second run starts at once.

The folder is $NUMFORMER_CACHE if set, else ~/.cache/numformer (`default_cache_dir`). What it
holds is numformer's own and never required: a file that cannot be written is one note on stderr
(`note`) and the run goes on without it; an entry that cannot be used is rebuilt.

- Texts (`read_cached_text`, `write_cached_text`): the built-in corpus, converted once; the text
  and a line with its SHA-256, so damage is noticed on reading.
- Token ids (numformer.data.batches.prepare keys them): `tokens-<key>.bin`, all ids of a corpus,
  little-endian, in the smallest unsigned type that holds the vocabulary (`id_dtype`), and
  `tokens-<key>.json`, the record that vouches for them: the cache format, the text's SHA-256 and
  the tokenizer spec the key was made from (`tokenizer_spec`), the tokenizer's JSON, the dtype,
  the count and a SHA-256 of the ids. `load_entry` uses an entry only if its record matches the
  key it is filed under and the ids match their count and SHA-256, and raises `Stale` (saying
  why) for anything else: another corpus's entry copied over this one, an entry of another
  tokenizer, a record that is damaged, not JSON or nested too deeply, ids cut short or changed.
  Ids without a record (a writer between its two renames) are a miss, not stale. `write_entry`
  writes the ids first and then their record, so a reader that sees a new record with another
  writer's ids notices the checksum and rebuilds, instead of trusting them.

Every file is written by numformer.checkpoint.replace_file (a temporary file of this process in
the same folder, then a rename), so processes that start together (MPI ranks) never read half a
file.

A `TokenFile` holds the ids file open and reads each window with `os.pread`: batches are the same
as from an array in memory, the pages read stay in the operating system's file cache rather than
in the process, and a file that another program cuts short while a run reads it is a DataError
naming it (through a memory map, the read would kill the process with SIGBUS). The ids checked
against their SHA-256 are those of the open file, so a file swapped in later is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np

from numformer import checkpoint
from numformer.checkpoint import TOKENIZER_LIMIT, read_json
from numformer.data.tokenizer import TOKENIZERS_VERSION, BPETokenizer, CharTokenizer, from_json
from numformer.errors import DataError, NumformerError

CACHE_FORMAT = 2  # 2: raw little-endian ids in tokens-<key>.bin


# ----------------------------------------------------------------------------- the folder


def default_cache_dir() -> Path:
    """$NUMFORMER_CACHE if set, else ~/.cache/numformer."""
    env = os.environ.get("NUMFORMER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "numformer"


def write_cache_file(path: Path, data) -> bool:
    """Write `data` (bytes, or an iterable of bytes) to `path` with numformer's atomic writer.

    Returns False (with a one-line note on stderr) when the folder cannot be written: a cache is never required.
    Any other error raised while `data` is produced (bad input found while writing) propagates,
    and the writer leaves no temporary file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.replace_file(path, data)
        return True
    except OSError as e:
        note(f"could not write the token cache file {path} ({e.strerror or type(e).__name__}); training goes on without it")
        return False


def note(message: str) -> None:
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
    write_cache_file(path, body + tail)


# ----------------------------------------------------------------------------- token ids


def id_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds every id of a vocabulary of vocab_size."""
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32


def file_dtype(vocab_size: int) -> np.dtype:
    """id_dtype, little-endian: the type of an ids file."""
    return np.dtype(id_dtype(vocab_size)).newbyteorder("<")


def tokenizer_spec(tokenizer, vocab_size) -> str:
    """What a cache key says about the tokenizer: "char", "bpe:<vocab_size>:tokenizers-<version>",
    or, for a tokenizer given as it is, "given:" and the SHA-256 of its JSON."""
    if isinstance(tokenizer, (CharTokenizer, BPETokenizer)):
        return "given:" + json_sha256(tokenizer.to_json())
    if tokenizer == "char":
        return "char"
    return f"bpe:{vocab_size}:tokenizers-{TOKENIZERS_VERSION}"


def json_sha256(tokenizer_json: str) -> str:
    return hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()


def entry_paths(folder: Path, text_sha: str, spec: str) -> tuple[Path, Path]:
    """(ids file, record) of the entry for a text (its SHA-256) and a tokenizer spec."""
    key = hashlib.sha256(f"{CACHE_FORMAT}\0{text_sha}\0{spec}".encode()).hexdigest()[:32]
    return folder / f"tokens-{key}.bin", folder / f"tokens-{key}.json"


class Stale(Exception):
    """A cache entry that is there but cannot be used; the message says why."""


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


def open_ids(path: Path):
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


def load_entry(ids_path: Path, meta_path: Path, text_sha: str, spec: str):
    """(ids as a TokenFile, tokenizer) from the cache entry; None if it has no record (a miss);
    Stale if the record does not match the key (text, tokenizer spec, format) or the ids do not
    match the record. The ids are checked against their SHA-256 on the file that is then read."""
    if not os.path.lexists(meta_path):
        return None
    try:
        # read only if a regular file (a FIFO would block, a device never end) of a tokenizer's size
        meta = read_json(meta_path, limit=TOKENIZER_LIMIT)
    except NumformerError as e:      # missing, not a regular file, too large, not JSON, not an object
        raise Stale(f"is not a record numformer can read ({str(e).removeprefix(f'{meta_path}: ')})") from None
    if meta.get("cache_format") != CACHE_FORMAT:
        raise Stale("has another cache format")
    if meta.get("text_sha256") != text_sha:
        raise Stale("was made from another text")
    if meta.get("spec") != spec:
        raise Stale("was made with another tokenizer")
    try:
        tokenizer_json = meta["tokenizer"]
        if spec.startswith("given:") and json_sha256(tokenizer_json) != spec.removeprefix("given:"):
            raise Stale("was made with another tokenizer")
        tok = from_json(tokenizer_json)
        dtype, n = np.dtype(meta["dtype"]), meta["n_tokens"]
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError, NumformerError):
        raise Stale("is damaged (a field is missing or unreadable)") from None
    if dtype != file_dtype(tok.vocab_size) or type(n) is not int or n < 1:
        raise Stale("is damaged (its dtype or count does not fit its tokenizer)")
    file = open_ids(ids_path)
    if file is None:
        raise Stale(f"has no ids file {ids_path.name}")
    try:
        whole = os.fstat(file.fileno()).st_size == n * dtype.itemsize and _sha256_of(file) == meta.get("ids_sha256")
    except OSError as e:
        whole, why = False, f"cannot read its ids in {ids_path.name} ({e.strerror})"
    else:
        why = f"does not match its ids in {ids_path.name} (cut short or changed)"
    if not whole:
        file.close()
        raise Stale(why)
    return TokenFile(file, ids_path, dtype, 0, n), tok


def write_entry(ids_path: Path, meta_path: Path, text_sha: str, spec: str, tok, parts) -> TokenFile | None:
    """Write the ids `parts` (arrays of file_dtype(tok.vocab_size), in order) and then their
    record; the ids as a TokenFile of the file written, or None when the folder cannot be written."""
    dtype = file_dtype(tok.vocab_size)
    ids_sha, counted = hashlib.sha256(), [0]

    def data():
        for part in parts:
            raw = part.tobytes()
            ids_sha.update(raw)
            counted[0] += len(part)
            yield raw

    if not write_cache_file(ids_path, data()):
        return None
    meta = {
        "cache_format": CACHE_FORMAT,
        "text_sha256": text_sha,
        "spec": spec,
        "dtype": dtype.str,
        "n_tokens": counted[0],
        "ids_sha256": ids_sha.hexdigest(),
        "tokenizer": tok.to_json(),
    }
    # ids first, then the record that vouches for them (see the module docstring)
    write_cache_file(meta_path, json.dumps(meta, ensure_ascii=False).encode("utf-8"))
    file = open_ids(ids_path)
    return None if file is None else TokenFile(file, ids_path, dtype, 0, counted[0])
