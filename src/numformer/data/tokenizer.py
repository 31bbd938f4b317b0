"""Tokenizers: characters, or byte-level BPE trained on the corpus.

Both map a string to a 1-D int64 array of token ids (`encode`) and back (`decode`), report their
`vocab_size` (V), and serialise to one self-contained JSON document (`to_json`) that
`from_json` turns back into an equal tokenizer. That document is what a checkpoint stores as
`tokenizer.json`, so a checkpoint never needs anything else to read its own token ids.

- `CharTokenizer`: the vocabulary is the sorted set of distinct characters (Unicode code points)
  of the training text, so id i is the i-th smallest code point. A character outside it cannot be
  encoded: `encode` raises `DataError` naming the character and its code point.
- `BPETokenizer`: GPT-2-style byte-level BPE trained with Hugging Face `tokenizers`: the text is
  cut by GPT-2's pre-tokenizer regex, each piece is written as UTF-8 bytes, and merges learned on
  the corpus join frequent byte pairs. The 256 single bytes are always in the vocabulary, so any
  string encodes, and decoding gives back exactly the string that was encoded.

JSON documents:

    {"type": "char", "format": 1, "chars": ["\\n", " ", "!", ...]}
    {"type": "bpe", "format": 1, "tokenizers_version": "0.23.3", "hf": {...HF tokenizer.json...}}
"""

from __future__ import annotations

import json
import re

import numpy as np

from numformer.errors import DataError, UsageError

FORMAT = 1
MIN_BPE_VOCAB = 257  # the 256 byte tokens plus at least one merge


def _describe(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


def _codes(text: str) -> np.ndarray:
    """The code points of `text` as uint32, without a Python loop."""  # (N,)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class CharTokenizer:
    """One token per character; the vocabulary is the sorted distinct characters of a text."""

    kind = "char"

    def __init__(self, chars):
        chars = list(chars)
        if not chars:
            raise DataError("a character tokenizer needs at least one character")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise DataError("a character tokenizer's vocabulary must be single characters")
        if sorted(set(chars)) != chars:
            raise DataError("a character tokenizer's vocabulary must be sorted and without repeats")
        self.chars = chars
        self._codes = _codes("".join(chars))  # (V,) sorted code points; id i <-> chars[i]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise DataError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = _codes(text)  # (N,)
        ids = np.searchsorted(self._codes, codes)  # (N,) position of each code in the vocabulary
        ids = np.minimum(ids, len(self._codes) - 1)
        unknown = self._codes[ids] != codes
        if unknown.any():
            first = int(np.argmax(unknown))
            n = int(unknown.sum())
            more = f" ({n} characters in all are unknown)" if n > 1 else ""
            raise DataError(
                f"character {_describe(text[first])} at position {first} is not in the "
                f"tokenizer's vocabulary of {self.vocab_size} characters{more}"
            )
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise DataError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._codes[ids.astype(np.int64)].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_json(self) -> str:
        return json.dumps({"type": self.kind, "format": FORMAT, "chars": self.chars}, ensure_ascii=False)

    def __eq__(self, other):
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _hf():
    try:
        import tokenizers
    except ImportError:
        raise DataError("the BPE tokenizer needs the package 'tokenizers': pip install tokenizers") from None
    return tokenizers


# Cut points that GPT-2's pre-tokenizer always makes: after a "\n" that has a non-space on both
# sides, the "\n" is a piece of its own. Encoding the chunks between such points one by one gives
# exactly the ids of encoding the whole text at once, and lets `encode_batch` use every core.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_CHUNK_CHARS = 1 << 16


def _chunks(text: str) -> list[str]:
    if len(text) <= _CHUNK_CHARS:
        return [text]
    chunks, start = [], 0
    while start < len(text):
        end = start + _CHUNK_CHARS
        if end >= len(text):
            chunks.append(text[start:])
            break
        cut = _SAFE_CUT.search(text, end)
        end = cut.start() if cut else len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme), trained on the corpus with Hugging Face `tokenizers`."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn merges on `text` until the vocabulary has `vocab_size` tokens (or no pair is left)."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise UsageError(f"vocab_size must be an integer, got {vocab_size!r}")
        if vocab_size < MIN_BPE_VOCAB:
            raise UsageError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
                f"{MIN_BPE_VOCAB} (256 bytes plus merges)"
            )
        if not text:
            raise DataError("cannot train a BPE tokenizer on empty text")
        hf = _hf()
        tok = hf.Tokenizer(hf.models.BPE())
        tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        chunks = _chunks(text)
        if len(chunks) == 1:
            return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        encodings = batch(chunks, add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise DataError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._tok.decode(ids.tolist(), skip_special_tokens=False)

    def to_json(self) -> str:
        doc = {
            "type": self.kind,
            "format": FORMAT,
            "tokenizers_version": _hf().__version__,
            "hf": json.loads(self._tok.to_str()),
        }
        return json.dumps(doc, ensure_ascii=False)

    def __eq__(self, other):
        return isinstance(other, BPETokenizer) and self._tok.to_str() == other._tok.to_str()

    def __repr__(self):
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def from_json(s: str | bytes) -> CharTokenizer | BPETokenizer:
    """Rebuild a tokenizer from `to_json()`'s document; DataError (one line) if it is not one."""
    try:
        doc = json.loads(s)
    except (ValueError, TypeError) as e:
        raise DataError(f"tokenizer JSON is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise DataError("tokenizer JSON must be an object with a \"type\" field")
    kind = doc.get("type")
    if doc.get("format", FORMAT) != FORMAT:
        raise DataError(f"tokenizer JSON has format {doc.get('format')!r}; this numformer reads format {FORMAT}")
    if kind == "char":
        chars = doc.get("chars")
        if not isinstance(chars, list):
            raise DataError("char tokenizer JSON needs \"chars\": a list of characters")
        try:
            return CharTokenizer(chars)
        except DataError as e:
            raise DataError(f"char tokenizer JSON is not usable: {e}") from None
    if kind == "bpe":
        hf_doc = doc.get("hf")
        if not isinstance(hf_doc, dict):
            raise DataError("bpe tokenizer JSON needs \"hf\": a Hugging Face tokenizer object")
        if (hf_doc.get("model") or {}).get("type") != "BPE":
            raise DataError("bpe tokenizer JSON: the embedded Hugging Face tokenizer is not a BPE model")
        hf = _hf()
        try:
            tok = hf.Tokenizer.from_str(json.dumps(hf_doc))
        except Exception as e:  # the Rust side raises a bare Exception
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"bpe tokenizer JSON cannot be loaded by tokenizers: {first_line}") from None
        return BPETokenizer(tok)
    raise DataError(f"tokenizer JSON has unknown type {kind!r} (expected 'char' or 'bpe')")
