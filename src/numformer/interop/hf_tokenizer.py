"""A Llama-family folder's tokenizer, applied as transformers applies it, and written back.

A Hugging Face folder's tokenizer is tokenizer.json (the `tokenizers` library's document: a
normalizer, a pre-tokenizer, the BPE model, a decoder, a post-processor, added tokens) with
tokenizer_config.json beside it (the class transformers loads it with, the named special tokens,
whether to add a BOS). `AutoTokenizer.from_pretrained` does not always apply tokenizer.json as it
is written; numformer applies it as transformers 5 (the version its tests compare with) does, and
stores the result in the checkpoint, so that `sample`, `eval` and fine-tuning see the ids
transformers would give:

- Which pipeline. For model_type "llama" with tokenizer_class LlamaTokenizer (in
  tokenizer_config.json, else in config.json) and a tokenizer.json that is not byte-level, transformers builds LlamaTokenizer's own pipeline from
  the file's vocabulary and merges: no normalizer, a Metaspace pre-tokenizer that puts "▁" before
  the first piece only (before every piece with `"legacy": true`, never with
  `"add_prefix_space": false`), byte fallback, and the decoder Replace("▁", " "), ByteFallback,
  Fuse, Strip(one leading space). Llama 2's and TinyLlama's own files (a Prepend("▁") and
  Replace(" ", "▁") normalizer) give other ids there for a text that starts with a space or
  follows a special token. For model_type "qwen2" transformers always builds Qwen2Tokenizer's
  pipeline: NFC, Qwen2's split regex, byte-level. Otherwise (Llama 3's byte-level file,
  PreTrainedTokenizerFast, every Mistral folder) it applies tokenizer.json as it is. A
  tokenizer_class other than these for a Llama folder is one that numformer does not reproduce:
  the tokenizer is left out with a note.
- Special tokens. The tokens tokenizer_config.json names (bos_token, eos_token, unk_token,
  pad_token, added_tokens_decoder; LlamaTokenizer and Qwen2Tokenizer have defaults for some)
  become special tokens, never split by BPE, as in transformers (one missing from the vocabulary
  is appended, as transformers appends it); their roles travel with the tokenizer. Whether a BOS
  goes before a text is the file's post-processor's to say (transformers 5 ignores
  tokenizer_config.json's add_bos_token when there is a tokenizer.json): Llama 2's and Llama 3's
  put one, Qwen2's none. That BOS is numformer's `special_prefix`, which `sample` and `eval` put
  before a text.

Export writes the stored tokenizer back as tokenizer.json with a tokenizer_config.json whose
class makes transformers apply it as it is (PreTrainedTokenizerFast) or, for Qwen2, rebuild the
same pipeline (Qwen2Tokenizer); the named special tokens go with it, and add_bos_token is left
out (transformers would ignore it), so the post-processor in the file decides.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import tokenizers

from numformer.checkpoint import read_json
from numformer.data.tokenizer import SPLIT_REGEXES, BPETokenizer, from_json
from numformer.errors import CheckpointError, DataError
from numformer.interop.hf_folder import (HF_TOKENIZER, HF_TOKENIZER_CONFIG, LEFT_OUT, NF_TOKENIZER, read_own_tokenizer,
                                         read_tokenizer_document)

QWEN2_REGEX = SPLIT_REGEXES[1]
AS_IT_IS = ("PreTrainedTokenizerFast", "TokenizersBackend")
LLAMA_CLASS, QWEN2_CLASS = "LlamaTokenizer", "Qwen2Tokenizer"
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# The named special tokens each class has when tokenizer_config.json does not name them.
CLASS_SPECIALS = {
    LLAMA_CLASS: {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    QWEN2_CLASS: {"eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
}


def read_hf_tokenizer(folder: Path, model_type: str, vocab_size: int,
                      config_class: str | None = None) -> tuple[str, str | None]:
    """(numformer tokenizer JSON or "null", note) for a Llama-family folder: its tokenizer.json as
    transformers applies it (see the module docstring), or numformer's own numformer_tokenizer.json
    (a character tokenizer, written by export). `config_class`: the tokenizer_class of the model's
    config.json, which counts where tokenizer_config.json names none. Tokenizer files that cannot
    be used are left out with a note that says why (ending LEFT_OUT)."""
    own = read_own_tokenizer(folder, vocab_size)
    if own is not None:
        return own
    file = folder / HF_TOKENIZER
    if not os.path.lexists(file):
        return "null", (f"{folder} has no {HF_TOKENIZER}: the checkpoint stores no tokenizer, so "
                        "`numformer sample` cannot turn its token ids into text")
    doc, note = read_tokenizer_document(file)
    if note:
        return "null", note
    kind = (doc.get("model") or {}).get("type") if isinstance(doc, dict) and isinstance(doc.get("model"), dict) \
        else None
    if kind != "BPE":
        return "null", f"{file} holds a {kind or 'unknown'} model, not BPE{LEFT_OUT}"
    config_file = folder / HF_TOKENIZER_CONFIG
    config = {}
    if os.path.lexists(config_file):
        try:
            config = read_json(config_file)
        except CheckpointError as e:
            return "null", f"{e}{LEFT_OUT}"
    if config.get("tokenizer_class") is None and config_class is not None:
        config = {**config, "tokenizer_class": config_class}
    try:
        applied, roles = as_transformers_applies(doc, config, model_type, str(config_file))
        tok = BPETokenizer.from_hf_document(applied, roles)
    except DataError as e:
        return "null", f"{file}: {e}{LEFT_OUT}"
    if tok.vocab_size > vocab_size:
        return "null", f"{file} has {tok.vocab_size} tokens but the model only {vocab_size}{LEFT_OUT}"
    return tok.to_json(), None


def as_transformers_applies(doc: dict, config: dict, model_type: str,
                            config_name: str = HF_TOKENIZER_CONFIG) -> tuple[dict, dict[str, str]]:
    """The tokenizer.json document `doc` as transformers applies it to a folder of `model_type`
    with tokenizer_config.json `config` (see the module docstring), and the roles of its named
    special tokens ({"bos_token": "<s>", ...}). DataError (one line) for what numformer does not
    reproduce."""
    cls = config.get("tokenizer_class")
    if cls is not None and not isinstance(cls, str):
        raise DataError(f"{config_name}: tokenizer_class must be a name, found {cls!r}")
    cls = cls.removesuffix("Fast") if cls and cls != "PreTrainedTokenizerFast" else cls
    doc, rebuilt = copy.deepcopy(doc), None        # rebuilt: the class whose own pipeline transformers uses
    if model_type == "qwen2":
        doc, rebuilt = _qwen2_pipeline(doc, config), QWEN2_CLASS
    elif model_type == "llama" and not _byte_level(doc) and cls == LLAMA_CLASS:
        doc, rebuilt = _llama_pipeline(doc, config, config_name), LLAMA_CLASS
    elif model_type == "llama" and cls not in (None, LLAMA_CLASS, *AS_IT_IS):
        raise DataError(f"{config_name} names tokenizer_class {cls}, which transformers applies in a way numformer "
                        f"does not reproduce (numformer reads {LLAMA_CLASS}, {QWEN2_CLASS} and "
                        f"{', '.join(AS_IT_IS)} tokenizers)")
    tok = _load(doc)
    names = {key: _content(config.get(key, CLASS_SPECIALS.get(rebuilt, {}).get(key)), f"{config_name}: {key}")
             for key in SPECIAL_KEYS}
    declared = config.get("added_tokens_decoder") or {}
    if not isinstance(declared, dict):
        raise DataError(f"{config_name}: added_tokens_decoder must be an object")
    for key, entry in sorted(declared.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else -1):
        if not str(key).isdigit() or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise DataError(f"{config_name}: added_tokens_decoder[{key!r}] is not an id and a token")
        _add(tok, entry["content"], int(key), entry, f"{config_name}: added_tokens_decoder[{key!r}]")
    for key in SPECIAL_KEYS:
        if names[key] is not None:
            _add(tok, names[key], None, {"special": True, "normalized": False}, f"{config_name}: {key}")
    return json.loads(tok.to_str()), {key: token for key, token in names.items() if token is not None}


def _byte_level(doc: dict) -> bool:
    """transformers' test for a byte-level tokenizer.json: "ByteLevel" anywhere in it."""
    return '"ByteLevel"' in json.dumps(doc)


def _bpe_parts(doc: dict) -> tuple[dict, list]:
    model = doc.get("model") or {}
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise DataError("model.vocab must be an object and model.merges an array")
    return vocab, merges


def _llama_pipeline(doc: dict, config: dict, config_name: str) -> dict:
    """LlamaTokenizer's pipeline on the file's vocabulary and merges (transformers 5)."""
    add_prefix_space = config.get("add_prefix_space")
    legacy = config.get("legacy", False)
    for key, value in (("add_prefix_space", add_prefix_space), ("legacy", legacy)):
        if value is not None and not isinstance(value, bool):
            raise DataError(f"{config_name}: {key} must be true, false or null, found {value!r}")
    add_prefix_space = add_prefix_space is not False
    # legacy null counts as true, as transformers reads it (not getattr(self, "legacy", True))
    scheme = "never" if not add_prefix_space else ("always" if legacy is not False else "first")
    vocab, merges = _bpe_parts(doc)
    doc["model"] = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                    "vocab": vocab, "merges": merges}
    doc["normalizer"] = None
    doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": False}
    steps = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
             {"type": "Fuse"}]
    if add_prefix_space:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    doc["decoder"] = {"type": "Sequence", "decoders": steps}
    return doc


def _qwen2_pipeline(doc: dict, config: dict) -> dict:
    """Qwen2Tokenizer's pipeline on the file's vocabulary and merges (transformers 5)."""
    vocab, merges = _bpe_parts(doc)
    doc["model"] = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                    "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                    "vocab": vocab, "merges": merges}
    doc["normalizer"] = {"type": "NFC"}
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": config.get("add_prefix_space") is True, "trim_offsets": True,
         "use_regex": False}]}
    doc["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return doc


def _load(doc: dict) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_str(json.dumps(doc))
    except Exception as e:
        if type(e) is not Exception:  # the Rust side reports a bad document as a bare Exception;
            raise                     # anything else is not the document's fault
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot be loaded by tokenizers: {first_line}") from None


def _content(value, where: str) -> str | None:
    """A named special token of tokenizer_config.json: a string, {"content": ...} or null."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not (isinstance(value, str) and value):
        raise DataError(f"{where} must be a token (text), found {value!r}")
    return value


def _add(tok: tokenizers.Tokenizer, content: str, expected_id: int | None, entry: dict, where: str) -> None:
    """Make `content` an added token of `tok` with the properties of `entry`, as transformers does;
    a token already in the vocabulary keeps its id, a new one is appended. DataError if it does not
    get `expected_id`."""
    flags = {k: entry[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special")
             if isinstance(entry.get(k), bool)}
    flags.setdefault("special", True)
    added = tokenizers.AddedToken(content, **flags)
    if flags["special"]:
        tok.add_special_tokens([added])
    else:
        tok.add_tokens([added])
    got = tok.token_to_id(content)
    if expected_id is not None and got != expected_id:
        raise DataError(f"{where} gives {content!r} the id {expected_id}, but the tokenizer has it at {got}")


def export_tokenizer_files(tokenizer_json: str | None, model_type: str) -> tuple[dict[str, bytes], dict, list[str]]:
    """(files, special token ids, notes) for a Llama-family export of a checkpoint's tokenizer
    (its JSON text, or None): tokenizer.json and tokenizer_config.json for a BPE tokenizer;
    numformer_tokenizer.json for a character tokenizer, which Hugging Face has no form for. The
    ids are {"bos_token_id": ..., "eos_token_id": ...} for config.json, None where there is none."""
    ids = {"bos_token_id": None, "eos_token_id": None}
    if tokenizer_json is None:
        return {}, ids, ["the checkpoint has no tokenizer; the export has none either"]
    tok = from_json(tokenizer_json)
    if not isinstance(tok, BPETokenizer):
        note = (f"the checkpoint's {tok.kind} tokenizer has no Hugging Face equivalent; it is written as "
                f"{NF_TOKENIZER}, which `numformer convert --from_hf` reads back (transformers ignores it)")
        return {NF_TOKENIZER: tokenizer_json.encode("utf-8")}, ids, [note]
    doc = json.loads(tokenizer_json)["hf"]
    if model_type == "qwen2" and not _same_pipeline(doc, _qwen2_pipeline(copy.deepcopy(doc), {})):
        raise CheckpointError("the checkpoint's tokenizer is not a Qwen2 tokenizer, and transformers gives every "
                              "Qwen2 folder's tokenizer.json Qwen2's own pipeline: its ids would differ from numformer's")
    config = {"tokenizer_class": QWEN2_CLASS if model_type == "qwen2" else AS_IT_IS[0],
              "clean_up_tokenization_spaces": False}
    for role in SPECIAL_KEYS:           # each written, null included: a class's default would fill a gap
        config[role] = tok.special_tokens.get(role)
        if role in ("bos_token", "eos_token") and config[role] is not None:
            ids[f"{role}_id"] = tok.token_id(config[role])
    config["added_tokens_decoder"] = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                       "single_word", "special")}
                                      for a in doc.get("added_tokens") or []}
    files = {HF_TOKENIZER: json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8"),
             HF_TOKENIZER_CONFIG: (json.dumps(config, ensure_ascii=False, indent=2) + "\n").encode("utf-8")}
    return files, ids, []


def _same_pipeline(a: dict, b: dict) -> bool:
    """Whether two tokenizer documents cut text into the same ids and join ids into the same text:
    the same model options, normalizer, pre-tokenizer and decoder, up to what changes neither
    (offsets, a byte-level decoder's options, an empty subword prefix written as null)."""
    def pipeline(doc):
        model = {k: v for k, v in (doc.get("model") or {}).items() if k not in ("vocab", "merges", "dropout")}
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            model[key] = model.get(key) or ""
        decoder = doc.get("decoder")
        if isinstance(decoder, dict) and decoder.get("type") == "ByteLevel":
            decoder = {"type": "ByteLevel"}
        return [model, doc.get("normalizer"), _without_offsets(doc.get("pre_tokenizer")), decoder]
    return pipeline(a) == pipeline(b)


def _without_offsets(step):
    """A pipeline step without its trim_offsets options (they change offsets, never ids)."""
    if isinstance(step, dict):
        return {k: _without_offsets(v) for k, v in step.items() if k != "trim_offsets"}
    if isinstance(step, list):
        return [_without_offsets(v) for v in step]
    return step


__all__ = ["read_hf_tokenizer", "as_transformers_applies", "export_tokenizer_files"]
