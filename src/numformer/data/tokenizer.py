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
  `BPETokenizer.from_gpt2_files` builds the same scheme from GPT-2's own vocab.json + merges.txt.
  `BPETokenizer.from_hf_document` wraps any BPE tokenizer.json, applied by `tokenizers` as it is
  written: Llama 3's and Qwen2's byte-level BPE (a split regex, then bytes), Llama 2's and
  TinyLlama's SentencePiece-style BPE (spaces as "▁", a "▁" before the text, bytes for the
  characters the vocabulary lacks). Before `tokenizers` sees a BPE model (those files, or a
  tokenizer.json), numformer checks it: ids 0..V-1, each once, and every merge joining two
  tokens of the vocabulary into a third.

Long texts. A BPE tokenizer encodes a long text in pieces cut where the ids of the pieces, joined,
are exactly those of the whole text (`encode`, `encode_stream`), which also lets `encode_batch`
use every core. Where that holds depends on the tokenizer's pipeline (`_cut_rule`): after a "\\n"
between two non-spaces for the split regexes of GPT-2, Llama 3 and Qwen2, which always end a
piece there; the same cut for a "▁" pipeline whose "\\n" never merges with anything, encoding
each later piece behind a "\\n" that is then dropped (so no "▁" is put before it); and nowhere
for any other pipeline, whose text is encoded whole.

Special tokens. `encode` gives the text's own tokens, never a BOS: training and `eval` read a
corpus as one stream. `special_prefix` is what transformers puts before a text by default
(Llama's BOS, from the tokenizer's post-processor; nothing for GPT-2 or Qwen2), which `sample`
puts before its prompt and `eval` before the text it scores.

JSON documents:

    {"type": "char", "format": 1, "chars": ["\\n", " ", "!", ...]}
    {"type": "bpe", "format": 1, "tokenizers_version": "0.23.3", "hf": {...HF tokenizer.json...},
     "special_tokens": {"bos_token": "<s>", "eos_token": "</s>"},      (special_tokens: when known)
     "chat": {"template": "{% for message in messages %}...", "end_of_turn": [2]}}   (chat: a chat model's)

"chat" is there only for a chat model's tokenizer (imported with its chat template: see
numformer.data.chat); a BPETokenizer then has `chat`, a ChatSettings, and otherwise None.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tokenizers

from numformer.checkpoint import TOKENIZER_LIMIT, parse_json, read_file
from numformer.data.chat import ChatSettings
from numformer.errors import DataError, UsageError

FORMAT = 1
MIN_BPE_VOCAB = 257  # the 256 byte tokens plus at least one merge
TOKENIZERS_VERSION = tokenizers.__version__   # a BPE tokenizer's document records it


def _describe(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as uint32, without a Python loop."""  # (N,)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def _unknown_message(text: str, unknown: np.ndarray, vocab_size: int, shown: int = 5) -> str:
    """One line naming the distinct unknown characters of `text` (the first `shown`, in order of
    first appearance, each with its first position) and how many there are in all."""
    positions = np.flatnonzero(unknown)
    first_at: dict[str, int] = {}
    for i in positions:
        ch = text[int(i)]
        if ch not in first_at:
            first_at[ch] = int(i)
            if len(first_at) > shown:
                break
    distinct = len(set(code_points(text)[positions].tolist())) if len(first_at) > shown else len(first_at)
    named = ", ".join(f"{_describe(c)} at position {i}" for c, i in list(first_at.items())[:shown])
    if distinct == 1:
        head = f"character {named} is"
    else:
        more = f" and {distinct - shown} more" if distinct > shown else ""
        head = f"{distinct} characters ({named}{more}) are"
    count = f" ({len(positions)} occurrences in all)" if len(positions) > 1 else ""
    return f"{head} not in the tokenizer's vocabulary of {vocab_size} characters{count}"


def check_fits(tokenizer, vocab_size: int, source: str) -> None:
    """DataError if `tokenizer` can make ids that a model with `vocab_size` rows cannot embed."""
    if tokenizer.vocab_size > vocab_size:
        raise DataError(f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
                        f"only {vocab_size}; they do not belong together")


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
        lone = [c for c in chars if "\ud800" <= c <= "\udfff"]
        if lone:  # UTF-8 text never holds one, and it cannot be printed or written as UTF-8
            raise DataError(f"a character tokenizer's vocabulary holds a lone surrogate {_describe(lone[0])}, "
                            "which is not a character of any UTF-8 text")
        self.chars = chars
        self._codes = code_points("".join(chars))  # (V,) sorted code points; id i <-> chars[i]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise DataError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def special_prefix(self) -> np.ndarray:
        """No special token goes before a text (see BPETokenizer.special_prefix)."""
        return np.zeros(0, dtype=np.int64)

    def encode(self, text: str) -> np.ndarray:
        codes = code_points(text)  # (N,)
        ids = np.searchsorted(self._codes, codes)  # (N,) position of each code in the vocabulary
        ids = np.minimum(ids, len(self._codes) - 1)
        unknown = self._codes[ids] != codes
        if unknown.any():
            raise DataError(_unknown_message(text, unknown, self.vocab_size))
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


# Cut points that GPT-2's pre-tokenizer always makes: after a "\n" that has a non-space on both
# sides, the "\n" is a piece of its own. Encoding the chunks between such points one by one gives
# exactly the ids of encoding the whole text at once, and lets `encode_batch` use every core.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
CHUNK_CHARS = 1 << 16


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """text cut at safe points (see _SAFE_CUT) into pieces of about `size` characters or more."""
    if len(text) <= size:
        return [text]
    chunks, start = [], 0
    while start < len(text):
        end = start + size
        if end >= len(text):
            chunks.append(text[start:])
            break
        cut = _SAFE_CUT.search(text, end)
        end = cut.start() if cut else len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


def safe_pieces(pieces: Iterable[str]) -> Iterator[str]:
    """The same text as `pieces`, regrouped so that every piece but the last ends at a safe cut
    point: encoding (or training on) the pieces one by one then gives what the whole text gives."""
    carry = ""
    for piece in pieces:
        text = carry + piece
        cut = _last_safe_cut(text)
        carry = text[cut:]
        if cut:
            yield text[:cut]
    if carry:
        yield carry


def _last_safe_cut(text: str) -> int:
    """The last position where _SAFE_CUT matches in `text` (0 if none): just after a "\\n" that
    has a non-space on both sides."""
    end = len(text) - 1
    while (i := text.rfind("\n", 1, end)) > 0:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        end = i
    return 0


# The split regexes after which a "\n" between two non-spaces always ends a piece (see chunks):
# GPT-2's (built into the ByteLevel pre-tokenizer), Llama 3's and Qwen2's.
SPLIT_REGEXES = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
REGEX_CUT, NEWLINE_CUT = "regex", "newline"
_BYTE_NEWLINE = "<0x0A>"   # the byte-fallback token of "\n"


def _cut_rule(doc: dict) -> str | None:
    """How a tokenizer (its Hugging Face document) may encode a long text in pieces cut by
    _SAFE_CUT, giving the ids of the whole text: REGEX_CUT, NEWLINE_CUT or None (see the module
    docstring).

    REGEX_CUT: the pre-tokenizer is GPT-2's ByteLevel, or a Split by one of SPLIT_REGEXES then
    ByteLevel without its regex, neither adding a space before a piece; the normalizer at most
    NFC. Each of those regexes ends the match holding a "\\n" that has a non-space on both sides
    right after it, and BPE merges only within a match.
    NEWLINE_CUT: the "▁" pipeline (a Metaspace pre-tokenizer or a Prepend/Replace normalizer)
    whose vocabulary has no token holding "\\n" but "\\n" itself and no merge of its byte token
    <0x0A>: that "\\n" is one token that never merges, so the tokens on its two sides are those
    of each side alone; a later piece is encoded behind a "\\n" and what comes up to it dropped.
    Either way no added token may hold a "\\n" (an added token is matched before anything else)."""
    if any("\n" in str(t.get("content", "")) for t in doc.get("added_tokens") or [] if isinstance(t, dict)):
        return None
    normalizers, pre = _steps(doc.get("normalizer"), "normalizers"), doc.get("pre_tokenizer")
    if normalizers is None:
        return None
    if _regex_byte_level(pre) and all(n.get("type") == "NFC" for n in normalizers):
        return REGEX_CUT
    model = doc.get("model") or {}
    vocab, merges = model.get("vocab") or {}, model.get("merges") or []
    if not (pre is None or (isinstance(pre, dict) and pre.get("type") == "Metaspace")):
        return None
    for n in normalizers:
        kind = n.get("type")
        if kind == "Replace":
            pattern = n.get("pattern")
            literal = pattern.get("String") if isinstance(pattern, dict) else None
            if not isinstance(literal, str) or "\n" in literal or "\n" in str(n.get("content", "")):
                return None
        elif kind != "Prepend" or "\n" in str(n.get("prepend", "")):
            return None
    if not ("\n" in vocab or (model.get("byte_fallback") and _BYTE_NEWLINE in vocab)):
        return None
    if any("\n" in token and token != "\n" for token in vocab):
        return None
    for merge in merges:
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if _BYTE_NEWLINE in pair:
            return None
    return NEWLINE_CUT


def _steps(step, key: str) -> list[dict] | None:
    """The steps of a normalizer (a Sequence flattened; [] for none); None if one is not an object."""
    if step is None:
        return []
    if not isinstance(step, dict):
        return None
    if step.get("type") != "Sequence":
        return [step]
    out = []
    for part in step.get(key) or []:
        inner = _steps(part, key)
        if inner is None:
            return None
        out += inner
    return out


def _regex_byte_level(pre) -> bool:
    """GPT-2's ByteLevel pre-tokenizer, or Split(one of SPLIT_REGEXES) then ByteLevel without its
    regex; no space added before a piece."""
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "ByteLevel":
        return pre.get("use_regex", True) is True and pre.get("add_prefix_space") is False
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not isinstance(parts, list) or len(parts) != 2 or not all(isinstance(p, dict) for p in parts):
        return False
    split, byte_level = parts
    pattern = split.get("pattern")
    return (split.get("type") == "Split" and isinstance(pattern, dict) and pattern.get("Regex") in SPLIT_REGEXES
            and split.get("behavior") == "Isolated" and split.get("invert") is False
            and byte_level.get("type") == "ByteLevel" and byte_level.get("use_regex") is False
            and byte_level.get("add_prefix_space") is False)


SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")


def _checked_roles(roles, hf_tokenizer) -> dict[str, str]:
    """`roles` (role -> token), checked: known roles, each naming a token of the tokenizer."""
    if not isinstance(roles, dict):
        raise DataError(f"special_tokens must be an object of role -> token, found {type(roles).__name__}")
    for role, token in roles.items():
        if role not in SPECIAL_ROLES:
            raise DataError(f"special_tokens: unknown role {role!r} (known: {', '.join(SPECIAL_ROLES)})")
        if not isinstance(token, str) or hf_tokenizer.token_to_id(token) is None:
            raise DataError(f"special_tokens: {role} {token!r} is not a token of the tokenizer")
    return {role: roles[role] for role in SPECIAL_ROLES if role in roles}


class BPETokenizer:
    """BPE with Hugging Face `tokenizers`: GPT-2's byte-level scheme trained on the corpus, or a
    Hugging Face tokenizer.json (Llama 3 and Qwen2's byte-level BPE, Llama 2's "▁" BPE)."""

    kind = "bpe"

    def __init__(self, hf_tokenizer, doc: dict | None = None, special_tokens: dict[str, str] | None = None,
                 chat: ChatSettings | None = None):
        """`doc`: the tokenizer's Hugging Face document, when the caller has it parsed already.
        `special_tokens`: the roles of some of its tokens, as a Hugging Face tokenizer_config.json
        names them ({"bos_token": "<s>", "eos_token": "</s>"}; see SPECIAL_ROLES). `chat`: a chat
        model's template and end-of-turn tokens (numformer.data.chat)."""
        self._tok = hf_tokenizer
        self.chat = chat
        self.special_tokens = _checked_roles(special_tokens or {}, hf_tokenizer)
        doc = doc if doc is not None else json.loads(hf_tokenizer.to_str())
        self._cut = _cut_rule(doc)
        if self._cut == NEWLINE_CUT:
            self._newline = hf_tokenizer.token_to_id("\n")
            if self._newline is None:
                self._newline = hf_tokenizer.token_to_id(_BYTE_NEWLINE)
        plain = hf_tokenizer.encode("a", add_special_tokens=False).ids
        full = hf_tokenizer.encode("a", add_special_tokens=True).ids
        at = next((k for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain), 0)
        self._prefix = np.asarray(full[:at], dtype=np.int64)

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges on `text` until the vocabulary has `vocab_size` tokens (or no pair is left).

        `text` may be one string or the pieces of one (a corpus read in pieces): the pieces are
        regrouped at safe cut points and streamed to the trainer, which keeps only the counts of
        the words it has seen, so the result is the same as for the whole string."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise UsageError(f"vocab_size must be an integer, got {vocab_size!r}")
        if vocab_size < MIN_BPE_VOCAB:
            raise UsageError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
                f"{MIN_BPE_VOCAB} (256 bytes plus merges)"
            )
        if isinstance(text, str) and not text:
            raise DataError("cannot train a BPE tokenizer on empty text")
        tok = tokenizers.Tokenizer(tokenizers.models.BPE())
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        pieces = [text] if isinstance(text, str) else safe_pieces(text)
        tok.train_from_iterator((chunk for piece in pieces for chunk in chunks(piece)), trainer=trainer)
        return cls(tok)

    @classmethod
    def from_gpt2_files(cls, vocab, merges) -> BPETokenizer:
        """GPT-2's byte-level BPE from its vocab.json (token -> id) and merges.txt (one merge rule
        per line, in rank order). "<|endoftext|>", when the vocabulary has it, is a special token
        that is never split, as in GPT-2. DataError (one line naming the file) if a file cannot be
        read or does not hold what it should: see _check_bpe."""
        vocab, merges = Path(vocab), Path(merges)
        try:
            vocab_map = parse_json(read_file(vocab, TOKENIZER_LIMIT, error=DataError))
        except ValueError as e:
            raise DataError(f"{vocab}: {e}") from None
        try:
            lines = read_file(merges, TOKENIZER_LIMIT, error=DataError).decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError(f"{merges}: not UTF-8 text") from None
        pairs = []
        for n, line in enumerate(lines, 1):
            if (n == 1 and line.startswith("#version")) or not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise DataError(f"{merges}: line {n} is not two tokens separated by one space: {line[:60]!r}")
            pairs.append((n, tuple(parts)))
        _check_bpe(vocab_map, pairs, str(vocab), lambda n: f"{merges}: line {n}")
        try:
            model = tokenizers.models.BPE(vocab=vocab_map, merges=[pair for _, pair in pairs])
        except Exception as e:
            if type(e) is not Exception:  # the Rust side reports a bad file as a bare Exception;
                raise                     # anything else is not the file's fault
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{vocab} and {merges} cannot be read as GPT-2 BPE files ({first})") from None
        tok = tokenizers.Tokenizer(model)
        tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tokenizers.decoders.ByteLevel()
        if tok.token_to_id("<|endoftext|>") is not None:
            tok.add_special_tokens(["<|endoftext|>"])
        return cls(tok)

    @classmethod
    def from_hf_document(cls, doc: dict, special_tokens: dict[str, str] | None = None) -> BPETokenizer:
        """The BPETokenizer of a Hugging Face tokenizer.json document (parsed) holding a BPE model,
        with the roles `special_tokens` gives its tokens; DataError (one line) if it holds another
        model or `tokenizers` cannot load it."""
        model = doc.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise DataError("the Hugging Face tokenizer is not a BPE model")
        _check_bpe(model.get("vocab"), [], "model.vocab", None)
        merges = model.get("merges")
        if not isinstance(merges, list):
            raise DataError(f"model.merges: expected a JSON array of merges, found {type(merges).__name__}")
        pairs = []
        for n, merge in enumerate(merges):    # "a b" (older files) or ["a", "b"]
            pair = merge.split(" ") if isinstance(merge, str) else merge
            if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
                raise DataError(f"model.merges[{n}] is not a pair of tokens: {str(merge)[:60]!r}")
            pairs.append((n, tuple(pair)))
        _check_bpe(model.get("vocab"), pairs, "model.vocab", lambda n: f"model.merges[{n}]")
        check_growth(doc)
        try:
            tok = tokenizers.Tokenizer.from_str(json.dumps(doc))
        except Exception as e:
            if type(e) is not Exception:  # the Rust side reports a bad document as a bare Exception;
                raise                     # anything else is not the document's fault
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"cannot be loaded by tokenizers: {first_line}") from None
        return cls(tok, doc, special_tokens)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def token_id(self, token: str) -> int | None:
        """The id of a token (as the vocabulary spells it: "<s>", "Ġthe"), or None."""
        return self._tok.token_to_id(token)

    @property
    def special_prefix(self) -> np.ndarray:
        """The ids that transformers puts before a text it encodes by default (BOS for Llama; empty
        for GPT-2 and Qwen2): those the tokenizer's post-processor adds before a text."""
        return self._prefix.copy()


    def encode_stream(self, pieces: Iterable[str]) -> Iterator[np.ndarray]:
        """The ids of a text given in pieces (a corpus read in pieces), piece by piece: joined, they
        are the ids of the whole text. The pieces are regrouped at safe cut points (safe_pieces);
        for a tokenizer that has none (see _cut_rule) the text is encoded whole, at the end."""
        if self._cut is None:
            yield self.encode("".join(pieces))
            return
        for i, piece in enumerate(safe_pieces(pieces)):
            yield self.encode(piece, follows_cut=i > 0)

    def encode(self, text: str, *, follows_cut: bool = False) -> np.ndarray:
        """The ids of the text itself (no special token is added; see `special_prefix`).
        follows_cut: the text is a piece of a longer one that starts at a safe cut (safe_pieces),
        so it is encoded as the rest of that text, not as a text of its own (see _cut_rule)."""
        pieces = chunks(text) if self._cut is not None else [text]
        behind = self._cut == NEWLINE_CUT
        if behind:           # a piece after a cut goes behind a "\n", and what comes up to it is dropped
            pieces = [("\n" + p if follows_cut or i else p) for i, p in enumerate(pieces)]
        if len(pieces) == 1:
            encodings = [self._tok.encode(pieces[0], add_special_tokens=False)]
        else:
            batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
            encodings = batch(pieces, add_special_tokens=False)
        parts = []
        for i, e in enumerate(encodings):
            ids = e.ids
            if behind and (follows_cut or i):
                ids = ids[ids.index(self._newline) + 1:]
            parts.append(np.asarray(ids, dtype=np.int64))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

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
            "tokenizers_version": TOKENIZERS_VERSION,
            "hf": json.loads(self._tok.to_str()),
        }
        if self.special_tokens:
            doc["special_tokens"] = self.special_tokens
        if self.chat is not None:
            doc["chat"] = self.chat.to_dict()
        return json.dumps(doc, ensure_ascii=False)

    def __eq__(self, other):
        return (isinstance(other, BPETokenizer) and self._tok.to_str() == other._tok.to_str()
                and self.special_tokens == other.special_tokens and self.chat == other.chat)

    def __repr__(self):
        return f"BPETokenizer(vocab_size={self.vocab_size})"


# How many times longer, in UTF-8 bytes, a tokenizer's pipeline may make a text: GPT-2's and
# numformer's make it at most 2 times longer, Llama's 12, BERT's 36. A chain of doubling Replace
# steps in a few KB of JSON makes it 2^40 times longer, and tokenizers allocates that in one go.
MAX_GROWTH = 1000

# Per step, an upper bound on the growth of a text in UTF-8 bytes (the steps not named grow nothing):
# Unicode normal forms (NFKC turns one character into up to 18), lowercasing ("İ" -> "i̇"), the
# byte-level alphabet (a byte becomes a character of up to 2 bytes), a space around each CJK
# character, an inserted space per token.
_NORMALIZER_GROWTH = {"NFC": 3, "NFD": 4, "NFKC": 18, "NFKD": 18, "Lowercase": 3, "ByteLevel": 2}
_PRE_TOKENIZER_GROWTH = {"ByteLevel": 2}
_DECODER_GROWTH = {"WordPiece": 2, "BPEDecoder": 2, "CTC": 2}
_SHRINKING = {   # the types that keep or shorten text, and the Sequence of each role
    "normalizer": {"Strip", "StripAccents", "Nmt", "Sequence"},
    "pre_tokenizer": {"BertPreTokenizer", "CharDelimiterSplit", "Digits", "FixedLength", "Punctuation", "Split",
                      "UnicodeScripts", "Whitespace", "WhitespaceSplit", "Sequence"},
    "decoder": {"ByteFallback", "ByteLevel", "Fuse", "Metaspace", "Strip", "Sequence"},
}
_SEQUENCE_KEY = {"normalizer": "normalizers", "pre_tokenizer": "pretokenizers", "decoder": "decoders"}


def check_growth(hf_doc: dict) -> None:
    """DataError (one line) if the normalizer and pre-tokenizer of a Hugging Face tokenizer
    document can make a text more than MAX_GROWTH times longer before it is cut into tokens, or
    its decoder can make the text of some tokens that much longer. The bound is worked out from the
    document, step by step (_growth), so nothing is allocated to find out."""
    for roles in (("normalizer", "pre_tokenizer"), ("decoder",)):
        bound = 1.0
        for role in roles:
            bound *= _growth(hf_doc.get(role), role)
        if bound > MAX_GROWTH:
            shown = f"{bound:,.0f}" if bound < 1e15 else f"{bound:.3g}"
            raise DataError(f"its {' and '.join(r.replace('_', '-') for r in roles)} can make a text up to {shown} "
                            f"times longer; numformer loads no tokenizer that can grow text more than "
                            f"{MAX_GROWTH:,} times")


def _growth(step, role: str) -> float:
    """An upper bound on how many times longer (in UTF-8 bytes) one step of a pipeline can make a
    text: the product over a Sequence, and for the steps that insert text, the size of what they
    insert against the least they replace."""
    if step is None:
        return 1.0
    kind = step.get("type") if isinstance(step, dict) else None
    if kind == "Sequence":
        parts = step.get(_SEQUENCE_KEY[role])
        if not isinstance(parts, list):
            raise DataError(f"its {role.replace('_', '-')} Sequence has no list of steps")
        bound = 1.0
        for part in parts:
            bound *= _growth(part, role)
            if bound > MAX_GROWTH ** 2:           # already refused; stop before floats overflow
                return bound
        return bound
    table = {"normalizer": _NORMALIZER_GROWTH, "pre_tokenizer": _PRE_TOKENIZER_GROWTH,
             "decoder": _DECODER_GROWTH}[role]
    if kind in table:
        return float(table[kind])
    if kind in _SHRINKING[role]:
        return 1.0
    if kind == "Replace" and role in ("normalizer", "decoder"):
        pattern, content = step.get("pattern"), step.get("content")
        inserted = len(content.encode("utf-8", "surrogatepass")) if isinstance(content, str) else 0
        literal = pattern.get("String") if isinstance(pattern, dict) else None
        if isinstance(literal, str) and literal:    # each match of the literal becomes the content
            return max(1.0, inserted / len(literal.encode("utf-8", "surrogatepass")))
        return 1.0 + inserted                       # a regex may match nothing, between every two bytes
    if kind == "Prepend" and role == "normalizer":
        prefix = step.get("prepend")
        return 1.0 + (len(prefix.encode("utf-8", "surrogatepass")) if isinstance(prefix, str) else 0)
    if kind == "BertNormalizer" and role == "normalizer":
        lower = step.get("lowercase") is not False
        accents = step.get("strip_accents") if step.get("strip_accents") is not None else lower
        return (3.0 if step.get("handle_chinese_chars") is not False else 1.0) * (4.0 if accents else 1.0) \
            * (3.0 if lower else 1.0)
    if kind == "Metaspace" and role == "pre_tokenizer":
        mark = step.get("replacement")
        return 2.0 * max(1, len(mark.encode("utf-8", "surrogatepass")) if isinstance(mark, str) else 4)
    if kind == "Precompiled" and role == "normalizer":
        return float(_longest_replacement(step.get("precompiled_charsmap")))
    raise DataError(f"its {role.replace('_', '-')} step {kind!r} is not one numformer knows how far it can grow "
                    "a text")


def _longest_replacement(charsmap) -> int:
    """The longest string a SentencePiece charsmap (base64: a 4-byte trie size, the trie, then the
    replacement strings, each ended by a NUL) can put in place of a character; when the map cannot
    be parsed, its whole size, which no replacement can exceed."""
    try:
        blob = base64.b64decode(charsmap or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise DataError("its Precompiled normalizer's charsmap is not base64") from None
    size = int.from_bytes(blob[:4], "little") if len(blob) >= 4 else len(blob)
    if 4 + size > len(blob):
        return max(1, len(blob))
    return max([1, *(len(piece) for piece in blob[4 + size:].split(b"\0"))])


def _check_bpe(vocab, merges, vocab_name: str, merge_name) -> None:
    """DataError (one line) unless `vocab` maps tokens to the ids 0..N-1, each id once, and every
    merge (number, (a, b)) joins two tokens of the vocabulary into a third. tokenizers itself
    accepts string or repeated ids, ids past the vocabulary (which a model's embedding cannot
    look up), and panics, past Python's reach, on a merge whose result is missing.
    `merge_name(number)` says where a merge is written ("merges.txt: line 3")."""
    if not isinstance(vocab, dict):
        raise DataError(f"{vocab_name}: expected a JSON object of token -> id, found {type(vocab).__name__}")
    if not vocab:
        raise DataError(f"{vocab_name}: the vocabulary is empty")
    owner = {}
    for token, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int):
            raise DataError(f"{vocab_name}: token {token!r} has id {i!r}, which is not an integer")
        if not 0 <= i < len(vocab):
            raise DataError(f"{vocab_name}: token {token!r} has id {i}; the ids of its {len(vocab)} tokens "
                            f"must be 0..{len(vocab) - 1}")
        if i in owner:
            raise DataError(f"{vocab_name}: tokens {owner[i]!r} and {token!r} both have id {i}")
        owner[i] = token
    for n, (a, b) in merges:
        for token in (a, b, a + b):
            if token not in vocab:
                raise DataError(f"{merge_name(n)} merges {a!r} and {b!r}, but {token!r} is not in {vocab_name}")


def from_json(s: str | bytes) -> CharTokenizer | BPETokenizer:
    """Rebuild a tokenizer from `to_json()`'s document; DataError (one line) if it is not one."""
    try:
        doc = json.loads(s)
    except (ValueError, TypeError) as e:
        raise DataError(f"tokenizer JSON is not valid JSON: {e}") from None
    except RecursionError:
        raise DataError("tokenizer JSON is not valid JSON: nested too deeply") from None
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
        try:
            tok = BPETokenizer.from_hf_document(hf_doc, doc.get("special_tokens"))
        except DataError as e:
            raise DataError(f"bpe tokenizer JSON: {e}") from None
        if doc.get("chat") is not None:
            tok.chat = ChatSettings.from_dict(doc["chat"], tok.vocab_size, "bpe tokenizer JSON")
        return tok
    raise DataError(f"tokenizer JSON has unknown type {kind!r} (expected 'char' or 'bpe')")
