"""Small tokenizers of the two kinds Llama-family folders ship, trained on a text with the
`tokenizers` package, with the tokenizer_config.json that goes beside each; for the random
folders of numformer.reference.llama_folder and for the tests.

- `byte_level_bpe`: Llama 3's and Qwen2's scheme. The text is cut by a split regex (Llama 3's, or
  Qwen2's, which differs in taking digits one at a time, after an NFC normalizer), each piece is
  written as UTF-8 bytes shown as printable characters, and merges join frequent pairs. Special
  tokens come after the merged vocabulary, as in both: Llama 3's <|begin_of_text|> and
  <|end_of_text|>, which its post-processor puts before every text (BOS); Qwen2's
  <|endoftext|>, <|im_start|> and <|im_end|>, and no BOS.
- `metaspace_bpe`: Llama 2's and TinyLlama's SentencePiece-style BPE. Spaces become "▁" and a
  "▁" goes before the text; <unk>, <s>, </s> are ids 0-2 and the 256 byte tokens <0x00>..<0xFF>
  ids 3-258, for the characters the merged vocabulary lacks ("\n" among them, as in Llama 2: byte
  fallback); <s> (BOS) goes before
  every text. `style="metaspace"` writes it as converted files have it since 2023 (a Metaspace
  pre-tokenizer), `style="normalizer"` as TinyLlama's and Llama 2's own tokenizer.json do (a
  Prepend and a Replace normalizer).

Needs only `tokenizers`.
"""

from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>")
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA2_SPECIALS = ("<unk>", "<s>", "</s>")
N_BYTES = 256


def byte_level_bpe(text: str, vocab_size: int, flavour: str = "llama3") -> Tokenizer:
    """A byte-level BPE of `vocab_size` tokens (specials included) in Llama 3's or Qwen2's form."""
    specials = LLAMA3_SPECIALS if flavour == "llama3" else QWEN2_SPECIALS
    regex = LLAMA3_REGEX if flavour == "llama3" else QWEN2_REGEX
    tok = Tokenizer(models.BPE(ignore_merges=flavour == "llama3"))    # as each ships it
    if flavour != "llama3":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=flavour == "llama3", use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if flavour == "llama3":
        bos = specials[0]
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def metaspace_bpe(text: str, vocab_size: int, style: str = "metaspace") -> Tokenizer:
    """A SentencePiece-style BPE with byte fallback of `vocab_size` tokens (specials and the 256
    byte tokens included), as Llama 2 and TinyLlama ship it (`style`: see the module docstring)."""
    first = len(LLAMA2_SPECIALS) + N_BYTES
    if vocab_size <= first:
        raise ValueError(f"vocab_size must be above {first} (the specials and the byte tokens)")
    trainer_tok = Tokenizer(models.BPE())
    # trained without the newlines, so that "\n" is left to its byte token <0x0A>, as in Llama 2
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="removed"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - first, show_progress=False, limit_alphabet=120)
    trainer_tok.train_from_iterator([text], trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {s: i for i, s in enumerate(LLAMA2_SPECIALS)}
    vocab.update({f"<0x{b:02X}>": len(LLAMA2_SPECIALS) + b for b in range(N_BYTES)})
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if style == "normalizer":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    elif style == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        raise ValueError(f"style must be 'metaspace' or 'normalizer', got {style!r}")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in LLAMA2_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    return tok


def tokenizer_config(tok: Tokenizer, kind: str) -> dict:
    """The tokenizer_config.json that goes beside `tok` in a folder of `kind` ("llama3", "qwen2" or
    "llama2"), as those models' folders have it: the class transformers loads it with, the named
    special tokens, and every added token under added_tokens_decoder."""
    added = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
             for a in json.loads(tok.to_str())["added_tokens"]}
    config = {"added_tokens_decoder": added, "clean_up_tokenization_spaces": False, "model_max_length": 131072}
    if kind == "llama3":
        config.update(tokenizer_class="PreTrainedTokenizerFast", bos_token=LLAMA3_SPECIALS[0],
                      eos_token=LLAMA3_SPECIALS[1])
    elif kind == "qwen2":
        config.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, eos_token="<|endoftext|>",
                      pad_token="<|endoftext|>", unk_token=None, errors="replace")
    elif kind == "llama2":
        config.update(tokenizer_class="LlamaTokenizer", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                      pad_token=None, add_bos_token=True, add_eos_token=False, legacy=False)
    else:
        raise ValueError(f"kind must be 'llama3', 'qwen2' or 'llama2', got {kind!r}")
    return config


__all__ = ["byte_level_bpe", "metaspace_bpe", "tokenizer_config", "LLAMA3_REGEX", "QWEN2_REGEX"]
