"""Small GGUF files that the tests write with the `gguf` package's own writer (GGUFWriter), laid
out as llama.cpp's converter lays out a Llama: its metadata keys, its tensor names, Q and K rows
permuted for llama.cpp's rotary layout, and a tokenizer of either kind GGUF describes:

- "gpt2": byte-level BPE (tokens spelled in GPT-2's byte alphabet, merges listed), as SmolLM2,
  Llama 3 and Qwen2 files carry it;
- "llama": a SentencePiece vocabulary (pieces with ▁ for a space, <0xNN> byte tokens for byte
  fallback, scores and no merges), as Llama 2, Mistral and TinyLlama files carry it.

Both vocabularies are trained here with `tokenizers` on a text with CJK, emoji and accents, so
that the files are small and nothing is downloaded. What the files mean (logits, token ids,
rendered chats) is always computed by transformers in the tests, never here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tokenizers
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from gguf import quants as gq

from numformer.ops.quant import BLOCK_FORMATS
from tests.helpers import TEXT

CORPUS = TEXT + ("我爱自然语言处理。東京タワーは高い。 Привет, мир! Ελληνικά. مرحبا بالعالم\n"
                 "Emoji: 👍🏽 🇫🇷 👨‍👩‍👧 🙂🙂 — naïve café, résumé, Straße.\n"
                 "def f(x):\n    return x ** 2  # four spaces\n\ttab\r\n") * 20

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a small test model.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Llama 2's shape: bos_token in the text, roles must alternate (raise_exception otherwise)
LLAMA2 = ("{{ bos_token }}{% for message in messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
          "{% endif %}{% endfor %}")

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_vocab(vocab_size=600):
    """(tokens, merges, token_types) of a byte-level BPE trained on CORPUS, ChatML's three special
    tokens first (control), one user-defined token (<think>) last."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHATML_SPECIALS,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    tok.train_from_iterator([CORPUS], trainer=trainer)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get) + ["<think>"]
    merges = [" ".join(pair) for pair in _merges(tok)]
    types = [TokenType.CONTROL if t in CHATML_SPECIALS else TokenType.NORMAL for t in tokens]
    types[-1] = TokenType.USER_DEFINED
    return tokens, merges, types


def _merges(tok):
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(tok.to_str())["model"]["merges"]]


def sentencepiece_vocab(vocab_size=700):
    """(tokens, scores, token_types) of a SentencePiece-style BPE vocabulary: <unk>, <s>, </s>,
    the 256 byte tokens <0x00>..<0xFF>, then the pieces of a BPE trained with Metaspace on CORPUS
    (characters first, then merged pieces in merge order), each scored −(its rank)."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                             limit_alphabet=150, show_progress=False)
    tok.train_from_iterator([CORPUS], trainer=trainer)
    vocab = tok.get_vocab()
    pieces = [t for t in sorted(vocab, key=vocab.get) if t not in ("<unk>", "<s>", "</s>")]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256 + \
            [TokenType.NORMAL] * len(pieces)
    return tokens, scores, types


def permute_for_gguf(w, n_head):
    """llama.cpp's converter (LlamaModel.permute): within each head, the rows of the rotate-half
    pairing (first half, second half) are interleaved into adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path, *, tokenizer="gpt2", fmt="F32", formats=None, n_layer=2, n_embd=64, n_head=4,
                     n_kv_head=2, n_hidden=128, context=64, rope_theta=10000.0, eps=1e-5, tied=True, seed=0,
                     chat_template=None, arch="llama", skip_keys=(), extra=None, weight_std=0.08,
                     with_merges=False) -> Path:
    """A random Llama-shaped model as a GGUF file at path. fmt: the type of every 2-D weight
    (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K; the norms stay F32); formats maps
    a tensor name to its own type. skip_keys: metadata keys left out; extra: more (key, value)
    pairs, or callables given the writer. with_merges: a SentencePiece vocabulary that lists
    merges too (derived from the scores, as newer converters write them)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    if tokenizer == "gpt2":
        tokens, merges, types = byte_level_vocab()
        scores = None
    else:
        tokens, scores, types = sentencepiece_vocab()
        merges = None
    V = len(tokens)
    w = GGUFWriter(str(path), arch)
    kv = {
        "context_length": lambda: w.add_context_length(context),
        "embedding_length": lambda: w.add_embedding_length(n_embd),
        "block_count": lambda: w.add_block_count(n_layer),
        "feed_forward_length": lambda: w.add_feed_forward_length(n_hidden),
        "attention.head_count": lambda: w.add_head_count(n_head),
        "attention.head_count_kv": lambda: w.add_head_count_kv(n_kv_head),
        "rope.freq_base": lambda: w.add_rope_freq_base(rope_theta),
        "attention.layer_norm_rms_epsilon": lambda: w.add_layer_norm_rms_eps(eps),
        "rope.dimension_count": lambda: w.add_rope_dimension_count(n_embd // n_head),
        "vocab_size": lambda: w.add_vocab_size(V),
    }
    for key, add in kv.items():
        if key not in skip_keys:
            add()
    w.add_name("numformer test model")
    w.add_tokenizer_model(tokenizer)
    w.add_tokenizer_pre("default" if tokenizer == "llama" else "smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    if with_merges and tokenizer == "llama":
        w.add_token_merges(_sentencepiece_merges(tokens, scores))
    if tokenizer == "gpt2":
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)
    else:
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)
    if chat_template is not False:
        w.add_chat_template(chat_template or (CHATML if tokenizer == "gpt2" else LLAMA2))
    for item in extra or ():
        if callable(item):
            item(w)
        else:
            key, value = item
            _add_value(w, key, value)

    hs = n_embd // n_head
    tensors = {"token_embd.weight": rng.normal(0, weight_std, (V, n_embd))}
    for i in range(n_layer):
        p = f"blk.{i}."
        q = rng.normal(0, weight_std, (n_head * hs, n_embd))
        k = rng.normal(0, weight_std, (n_kv_head * hs, n_embd))
        if arch == "llama":
            q, k = permute_for_gguf(q, n_head), permute_for_gguf(k, n_kv_head)
        tensors |= {
            p + "attn_norm.weight": 1.0 + rng.normal(0, 0.1, n_embd),
            p + "attn_q.weight": q,
            p + "attn_k.weight": k,
            p + "attn_v.weight": rng.normal(0, weight_std, (n_kv_head * hs, n_embd)),
            p + "attn_output.weight": rng.normal(0, weight_std, (n_embd, n_head * hs)),
            p + "ffn_norm.weight": 1.0 + rng.normal(0, 0.1, n_embd),
            p + "ffn_gate.weight": rng.normal(0, weight_std, (n_hidden, n_embd)),
            p + "ffn_up.weight": rng.normal(0, weight_std, (n_hidden, n_embd)),
            p + "ffn_down.weight": rng.normal(0, weight_std, (n_embd, n_hidden)),
        }
        if arch == "qwen2":
            for name, rows in (("attn_q", n_head * hs), ("attn_k", n_kv_head * hs), ("attn_v", n_kv_head * hs)):
                tensors[p + name + ".bias"] = rng.normal(0, 0.1, rows)
    tensors["output_norm.weight"] = 1.0 + rng.normal(0, 0.1, n_embd)
    if not tied:
        tensors["output.weight"] = rng.normal(0, weight_std, (V, n_embd))
    for name, value in tensors.items():
        kind = (formats or {}).get(name, fmt if value.ndim == 2 else "F32")
        add_tensor(w, name, value.astype(np.float32), kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def add_tensor(w, name, value, kind):
    """value (float32) stored as `kind` with the gguf package's quantizer, or, for the K-quants it
    cannot write, as random blocks (their dequantization is what the tests compare)."""
    qtype = GGMLQuantizationType[kind]
    if kind == "F32":
        w.add_tensor(name, value)
    elif kind == "F16":
        w.add_tensor(name, value.astype(np.float16))
    elif kind.endswith("_K"):
        values, size = BLOCK_FORMATS[kind]
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        raw = rng.integers(0, 256, size=(value.shape[0], value.shape[1] // values, size), dtype=np.uint8)
        offsets = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}[kind]
        for off in offsets:     # small float16 scales, so that the random model stays tame
            raw[..., off:off + 2] = np.full(raw.shape[:2], 2e-3, np.float16).view(np.uint8).reshape(*raw.shape[:2], 2)
        w.add_tensor(name, raw.reshape(value.shape[0], -1), raw_dtype=qtype)
    else:
        w.add_tensor(name, gq.quantize(value, qtype), raw_dtype=qtype)


def _add_value(w, key, value):
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, value)


def _sentencepiece_merges(tokens, scores):
    """Merges of a SentencePiece vocabulary in score order: each piece split every way into two
    pieces of the vocabulary."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for t, s in zip(tokens, scores):
        for i in range(1, len(t)):
            if t[:i] in vocab and t[i:] in vocab:
                found.append((s, vocab[t[:i]], vocab[t[i:]], t[:i], t[i:]))
    found.sort(key=lambda f: (-f[0], f[1], f[2]))
    return [f"{a} {b}" for *_, a, b in found if " " not in a + b]
