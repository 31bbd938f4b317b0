"""A GGUF file's tokenizer, rebuilt as a Hugging Face tokenizer.json.

A GGUF holds no tokenizer.json: it lists the vocabulary under llama.cpp's keys
(`tokenizer.ggml.model`, `.pre`, `.tokens`, `.token_type`, `.scores`, `.merges`, the special
token ids), and a reader rebuilds the tokenizer from them. numformer rebuilds it exactly as
transformers' GGUF loader does (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), so that
both give the same token ids for every text (tests/interop/test_gguf_tokenizer.py):

- `gpt2` (byte-level BPE: SmolLM2, Llama 3, Qwen2): the tokens as the file spells them, except a
  token with a character outside GPT-2's byte alphabet, which is respelled in it (its UTF-8 bytes,
  each as its alphabet character); the merges as listed. Pre-tokenizer: GPT-2's ByteLevel, or, for
  a `tokenizer.ggml.pre` that names a split of its own (llama-bpe, qwen2, tekken, gpt-4o, ...), that
  regular expression followed by ByteLevel without its own regex.
- `llama` (SentencePiece BPE: Llama 2, Mistral, TinyLlama): the pieces as spelled, ▁ for a
  space, byte fallback to the <0xNN> tokens, a ▁ put in front of the text's first word
  (Metaspace, prepend "first"); the merges as listed or, as most such files list none, derived
  from the scores: every way of cutting a piece into two pieces of the vocabulary, best score first.

Special tokens: every token the file marks CONTROL (type 3) and the bos, eos, unk and padding
tokens are special (matched whole in the text, never cut into pieces); USER_DEFINED tokens
(type 4, `<think>`, say) are matched whole too, without being special. Transformers ignores
`tokenizer.ggml.add_space_prefix`, and so does numformer. The chat template and the special tokens
by role are read by numformer.interop.gguf.
"""

from __future__ import annotations

import json

import tokenizers
from tokenizers import AddedToken, Regex, decoders, pre_tokenizers, processors

from numformer.errors import CheckpointError

TOKEN_TYPES = {"NORMAL": 1, "UNKNOWN": 2, "CONTROL": 3, "USER_DEFINED": 4, "UNUSED": 5, "BYTE": 6}

_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> the split its merges were learned with (others: GPT-2's own ByteLevel regex)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
    "qwen35": _QWEN35,
    "tekken": _TEKKEN,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map: the printable bytes stand for themselves, the other 68 are
    shifted to U+0100 and up, so every byte string is a string of visible characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return chars


def tokenizer_json(meta: dict, source: str) -> str:
    """The tokenizer.json text of a GGUF file's tokenizer. meta: the file's `tokenizer.ggml.*`
    values by key (numformer.interop.gguf reads them); source names the file in errors."""
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise CheckpointError(f"{source}: the file lists no tokenizer.ggml.tokens, so it has no tokenizer")
    types = meta.get("tokenizer.ggml.token_type") or [TOKEN_TYPES["NORMAL"]] * len(tokens)
    if len(types) != len(tokens):
        raise CheckpointError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    if model == "gpt2":
        tok = _byte_level(tokens, meta, source)
    elif model == "llama":
        tok = _sentencepiece(tokens, meta, source)
    else:
        raise CheckpointError(f"{source}: tokenizer.ggml.model is {model!r}; numformer reads the 'gpt2' (byte-level "
                              f"BPE) and 'llama' (SentencePiece BPE) tokenizers of GGUF files")
    _add_special_tokens(tok, tokens, types, meta, byte_level=model == "gpt2")
    return tok.to_str()


def _byte_level(tokens, meta, source):
    alphabet = byte_alphabet()
    spelled = set(alphabet.values())
    vocab = {}
    for i, t in enumerate(tokens):
        key = t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8"))
        if key in vocab:
            raise CheckpointError(f"{source}: tokenizer.ggml.tokens {vocab[key]} and {i} are the same byte-level "
                                  f"token {key!r}")
        vocab[key] = i
    merges = _listed_merges(meta, source)
    if merges is None:
        raise CheckpointError(f"{source}: a byte-level (gpt2) tokenizer needs tokenizer.ggml.merges, which the file "
                              f"does not have")
    _check_merges(merges, vocab, source)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                                                     continuing_subword_prefix="", end_of_word_suffix="",
                                                     fuse_unk=False, byte_fallback=False))
    split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = _post_processor(meta, tokens, bos_default=False)
    return tok


def _sentencepiece(tokens, meta, source):
    vocab = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise CheckpointError(f"{source}: tokenizer.ggml.tokens {vocab[t]} and {i} are the same token {t!r}")
        vocab[t] = i
    merges = _listed_merges(meta, source)
    if merges is None:
        scores = meta.get("tokenizer.ggml.scores")
        if not isinstance(scores, list) or len(scores) != len(tokens):
            raise CheckpointError(f"{source}: a SentencePiece (llama) tokenizer needs tokenizer.ggml.merges or one "
                                  f"tokenizer.ggml.scores entry per token")
        merges = merges_from_scores(vocab, dict(zip(tokens, scores)))
    _check_merges(merges, vocab, source)
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True,
                                                     dropout=None))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.post_processor = _post_processor(meta, tokens, bos_default=True)
    return tok


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """The merges a SentencePiece vocabulary implies: for each piece (in vocabulary order), every
    cut into a left and a right piece that are both in the vocabulary, ordered by the left's then
    the right's id; then all of them by the score of the piece they make, best first, then by
    the lengths of left and right, longest first (ties keep that order: a stable sort)."""
    found = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found += local
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _listed_merges(meta, source):
    merges = meta.get("tokenizer.ggml.merges")
    if merges is None:
        return None
    pairs = []
    for n, m in enumerate(merges):
        parts = m.split(" ") if isinstance(m, str) else None
        if parts is None or len(parts) != 2 or not all(parts):
            raise CheckpointError(f"{source}: tokenizer.ggml.merges[{n}] is not two tokens separated by one space: "
                                  f"{str(m)[:60]!r}")
        pairs.append(tuple(parts))
    return pairs


def _check_merges(merges, vocab, source):
    """tokenizers panics, past Python's reach, on a merge whose result is not in the vocabulary."""
    for n, (a, b) in enumerate(merges):
        for t in (a, b, a + b):
            if t not in vocab:
                raise CheckpointError(f"{source}: tokenizer.ggml.merges[{n}] merges {a!r} and {b!r}, but {t!r} is not "
                                      f"one of the tokens")


def _post_processor(meta, tokens, bos_default: bool):
    """What encoding with special tokens adds (numformer never asks for it, but a tokenizer.json
    is also read by others): the BOS token in front where the file says tokenizer.ggml.add_bos_token
    (for a SentencePiece file that does not say, as llama.cpp does: yes), the EOS at the end where
    it says add_eos_token."""
    bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    add_bos = meta.get("tokenizer.ggml.add_bos_token", bos_default) and _valid_id(bos_id, tokens)
    add_eos = meta.get("tokenizer.ggml.add_eos_token", False) and _valid_id(eos_id, tokens)
    single, pair, specials = ["$A:0"], ["$A:0", "$B:1"], []
    if add_bos:
        single, pair = [f"{tokens[bos_id]}:0", *single], [f"{tokens[bos_id]}:0", "$A:0", f"{tokens[bos_id]}:1", "$B:1"]
        specials.append((tokens[bos_id], bos_id))
    if add_eos:
        single, pair = [*single, f"{tokens[eos_id]}:0"], [*pair[:2], f"{tokens[eos_id]}:0", *pair[2:], f"{tokens[eos_id]}:1"]
        if tokens[eos_id] not in dict(specials):
            specials.append((tokens[eos_id], eos_id))
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _valid_id(i, tokens) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tokens)


def _add_special_tokens(tok, tokens, types, meta, byte_level: bool):
    spelled = set(byte_alphabet().values()) if byte_level else None
    control = [t for t, kind in zip(tokens, types)
               if kind == TOKEN_TYPES["CONTROL"] and (spelled is None or set(t) <= spelled)]
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        i = meta.get(f"tokenizer.ggml.{key}")
        if _valid_id(i, tokens) and tokens[i] not in control and (spelled is None or set(tokens[i]) <= spelled):
            control.append(tokens[i])
    if control:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    vocab = tok.get_vocab()
    user = [t for t, kind in zip(tokens, types) if kind == TOKEN_TYPES["USER_DEFINED"] and t in vocab]
    if user:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])


def special_token_ids(document: str) -> dict[str, int]:
    """The special added tokens of a tokenizer.json text by content."""
    return {t["content"]: t["id"] for t in json.loads(document).get("added_tokens", []) if t.get("special")}
