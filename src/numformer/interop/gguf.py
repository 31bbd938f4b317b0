"""GGUF files in: llama.cpp's one-file format (weights, hyper-parameters, tokenizer, chat template).

The file is read with the `gguf` package's reader (GGUFReader, which maps it into memory); what
it holds is turned into numformer's terms here:

    metadata  {arch}.block_count, .embedding_length, .feed_forward_length, .attention.head_count,
              .attention.head_count_kv, .rope.freq_base, .attention.layer_norm_rms_epsilon,
              .context_length                     -> the LlamaConfig (n_layer, n_embd, n_hidden,
                                                      n_head, n_kv_head, rope_theta, rms_norm_eps,
                                                      block_size); no output.weight: tied embeddings
    tensors   token_embd, blk.{i}.attn_norm / attn_q / attn_k / attn_v / attn_output / ffn_norm /
              ffn_gate / ffn_up / ffn_down, output_norm, output
                                                  -> model.embed_tokens, model.layers.{i}.input_layernorm,
                                                      self_attn.{q,k,v,o}_proj, post_attention_layernorm,
                                                      mlp.{gate,up,down}_proj, model.norm, lm_head
    tokenizer tokenizer.ggml.*                    -> a tokenizer.json (numformer.interop.gguf_tokenizer)
    chat      tokenizer.chat_template and the bos / eos / end-of-turn tokens

Architectures: `llama` (Llama 1-3, Mistral, SmolLM, TinyLlama: llama.cpp writes all of them as
llama) and `qwen2` (biases on q, k and v). Anything numformer does not implement is refused in one
line that names it: another architecture, rope scaling, a sliding window, experts, a head size
other than n_embd / n_head, a tensor numformer has no place for, a tensor type it cannot read.

The Q/K permutation. llama.cpp computes rotary embeddings on adjacent pairs of a head's
dimensions (2j, 2j+1), Hugging Face checkpoints (and numformer) on halves (j, j + hs/2). So its
converter reorders the rows of q_proj and k_proj (and their biases) within each head,
HF row h·hs + s·hs/2 + j  ->  GGUF row h·hs + 2j + s  (s = 0, 1 the half), which gives the same
attention with its rotation. Reading a llama file undoes it: GGUF rows reshaped to
(heads, hs/2, 2) and the two last axes swapped (`unpermute_rows`). Qwen2's files are written
with the halves pairing and are not permuted. A row permutation moves whole rows, and GGUF stores
a row's blocks together, so kept (still quantized) weights are unpermuted the same way.

Tensor types: F32, F16, BF16 and F64 are read as floats; the block formats (Q8_0, Q4_0, Q4_1,
Q5_0, Q5_1, Q2_K..Q6_K) are dequantized with the formulas of numformer.ops.quant, bit for bit as
the `gguf` package (and so transformers) dequantizes them.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType

from numformer.checkpoint import PICKLE_SUFFIXES, pickle_refusal
from numformer.data.chat import ChatSettings
from numformer.data.tokenizer import BPETokenizer
from numformer.errors import CheckpointError, DataError
from numformer.interop.gguf_tokenizer import tokenizer_json
from numformer.ops import quant

MAGIC = b"GGUF"
ARCHITECTURES = ("llama", "qwen2")
FLOAT_TYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
READABLE_TYPES = ("F32", "F16", "BF16", "F64", *quant.BLOCK_FORMATS)

# GGUF tensor name (with {i} for the layer) -> Hugging Face name
TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
BIAS_NAMES = {
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
}

# Metadata that changes what the model computes in ways numformer does not implement; a key
# present with a value other than the harmless one is refused.
_UNSUPPORTED = {
    "rope.scaling.type": ("none",),
    "attention.sliding_window": (0,),
    "expert_count": (0,),
    "attention.clamp_kqv": (),
    "logit_scale": (1.0,),
    "attn_logit_softcapping": (),
    "final_logit_softcapping": (),
}


@dataclass
class GGUFTensor:
    """One tensor of the file, not yet read: its GGUF name and type, its shape as numformer uses
    it ((rows, columns) for a matrix: PyTorch's (out, in)), the mapped data, and, for q and k of a
    llama file, the number of heads whose rows to unpermute."""

    gguf_name: str
    kind: str                        # "F32", "Q4_1", ...
    shape: tuple[int, ...]
    data: np.ndarray                 # as the reader maps it: floats, or uint8 rows of blocks
    heads: int | None = None         # unpermute_rows(…, heads) when set

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass
class GGUFModel:
    """What a GGUF file holds, in numformer's terms (read_gguf)."""

    path: Path
    arch: str
    name: str | None
    config: dict                     # LlamaConfig's fields
    tensors: dict[str, GGUFTensor]   # by Hugging Face name
    tokenizer: str                   # tokenizer.json text (Hugging Face's)
    chat: ChatSettings               # the chat template and end-of-turn ids (chat_info)
    special_tokens: dict[str, str]   # bos_token, eos_token, unk_token, pad_token: the tokens the file names
    file_type: str                   # the most common type of its matrices ("Q4_1"), for messages

    def float32(self, name: str) -> np.ndarray:
        """Tensor `name` as float32, dequantized and unpermuted."""
        return tensor_float32(self.tensors[name], str(self.path))

    def bpe_tokenizer(self) -> BPETokenizer:
        """numformer's tokenizer for the file, with its chat settings."""
        try:
            tok = BPETokenizer.from_hf_document(json.loads(self.tokenizer), self.special_tokens)
        except DataError as e:
            raise CheckpointError(f"{self.path}: its tokenizer: {e}") from None
        tok.chat = self.chat
        return tok

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every tensor as float32, by Hugging Face name."""
        return {name: self.float32(name) for name in self.tensors}


# ----------------------------------------------------------------------------- reading

def read_gguf(path) -> GGUFModel:
    """The GGUF file at path, read (metadata, tokenizer) and mapped (tensors); CheckpointError in
    one line naming the file for anything that is not a GGUF file numformer can run."""
    path = Path(path)
    reader = open_reader(path)
    src = str(path)
    meta = Metadata(reader, src)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{src}: the model's architecture is {arch!r}; numformer runs GGUF files of the "
                              f"{' and '.join(ARCHITECTURES)} architectures")
    config = _config(meta, arch, reader, src)
    tensors = _tensors(reader, arch, config, src)
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    if config["vocab_size"] != vocab:
        raise CheckpointError(f"{src}: {arch}.vocab_size says {config['vocab_size']} tokens but token_embd.weight "
                              f"has {vocab} rows")
    tok_meta = {k: meta.get(k) for k in meta.keys() if k.startswith("tokenizer.ggml.")}
    tokenizer = tokenizer_json(tok_meta, src)
    n_tokens = len(tok_meta.get("tokenizer.ggml.tokens") or ())
    if n_tokens > vocab:
        raise CheckpointError(f"{src}: the tokenizer has {n_tokens} tokens but the model's vocabulary only {vocab}")
    kinds = [t.kind for t in tensors.values() if len(t.shape) == 2]
    chat, roles = chat_info(meta, src)
    return GGUFModel(path, arch, meta.get("general.name"), config, tensors, tokenizer, chat, roles,
                     max(set(kinds), key=kinds.count))


def is_gguf(path) -> bool:
    """True when path is a regular file that begins with GGUF's magic bytes."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def open_reader(path: Path) -> GGUFReader:
    """The gguf package's reader on path; CheckpointError (one line) when the file is missing,
    not GGUF, truncated or damaged."""
    src = str(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refusal(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{src}: no such file") from None
    except OSError as e:
        raise CheckpointError(f"{src}: cannot read it ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CheckpointError(f"{src}: {kind}; a GGUF model is one file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{src}: cannot read it ({e.strerror or type(e).__name__})") from None
    if head != MAGIC:
        shown = head.decode("latin-1").encode("unicode_escape").decode("ascii") or "nothing"
        raise CheckpointError(f"{src}: not a GGUF file (it begins with {shown!r}, not 'GGUF')")
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, KeyError, IndexError, OverflowError, TypeError, UnicodeDecodeError, MemoryError) as e:
        # the reader parses this file and nothing else: what it raises is about the file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        if "GGMLQuantizationType" in first:
            first = f"a tensor of unknown type ({first})"
        raise CheckpointError(f"{src}: a damaged or truncated GGUF file, or one of a newer kind "
                              f"(the gguf reader says: {first})") from None
    if reader.byte_order == "S":
        raise CheckpointError(f"{src}: a GGUF file of the other byte order than this machine's ({sys.byteorder}-endian)")
    return reader


class Metadata:
    """The file's key-value metadata, values decoded on first use (a bool, int, float, str or
    list of them)."""

    def __init__(self, reader: GGUFReader, source: str):
        self.fields, self.source, self._cache = reader.fields, source, {}

    def keys(self):
        return self.fields.keys()

    def __contains__(self, key):
        return key in self.fields

    def get(self, key, default=None):
        if key not in self.fields:
            return default
        if key not in self._cache:
            self._cache[key] = self._decode(self.fields[key], key)
        return self._cache[key]

    def _decode(self, field, key):
        types = field.types
        try:
            if types[0] == GGUFValueType.ARRAY:
                if len(types) > 1 and types[-1] == GGUFValueType.STRING:
                    return field.contents()
                return np.concatenate([field.parts[i] for i in field.data]).tolist() if field.data else []
            value = field.contents()
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.source}: metadata {key} holds text that is not UTF-8 (byte {e.start})") from None
        if types[0] == GGUFValueType.BOOL:
            return bool(value)
        return value


def _int(meta, key, src, *, default=None, minimum=1):
    value = meta.get(key, default)
    if value is None:
        raise CheckpointError(f"{src}: the metadata has no {key}, which numformer needs")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(f"{src}: metadata {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(meta, key, src, *, default=None):
    value = meta.get(key, default)
    if value is None:
        raise CheckpointError(f"{src}: the metadata has no {key}, which numformer needs")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise CheckpointError(f"{src}: metadata {key} must be a positive finite number, got {value!r}")
    return float(value)


def _config(meta: Metadata, arch: str, reader, src: str) -> dict:
    for key, harmless in _UNSUPPORTED.items():
        value = meta.get(f"{arch}.{key}")
        if value is not None and value not in harmless:
            raise CheckpointError(f"{src}: {arch}.{key} = {value!r}; numformer does not implement it")
    n_embd = _int(meta, f"{arch}.embedding_length", src)
    n_head = _int(meta, f"{arch}.attention.head_count", src)
    if isinstance(meta.get(f"{arch}.attention.head_count_kv"), list):
        raise CheckpointError(f"{src}: {arch}.attention.head_count_kv varies by layer; numformer does not implement it")
    n_kv_head = _int(meta, f"{arch}.attention.head_count_kv", src, default=n_head)
    if n_embd % n_head:
        raise CheckpointError(f"{src}: {arch}.embedding_length {n_embd} is not a multiple of attention.head_count "
                              f"{n_head}")
    if n_head % n_kv_head:
        raise CheckpointError(f"{src}: {arch}.attention.head_count {n_head} is not a multiple of "
                              f"attention.head_count_kv {n_kv_head}")
    hs = n_embd // n_head
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        value = meta.get(f"{arch}.{key}")
        if value is not None and value != hs:
            raise CheckpointError(f"{src}: {arch}.{key} is {value!r}, not the head size {hs} (embedding_length / "
                                  f"head_count); numformer does not implement it")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get(f"{arch}.vocab_size", len(tokens) if isinstance(tokens, list) else None)
    names = {t.name for t in reader.tensors}
    return {
        "vocab_size": _int(meta, f"{arch}.vocab_size", src, default=vocab),
        "block_size": _int(meta, f"{arch}.context_length", src),
        "n_layer": _int(meta, f"{arch}.block_count", src),
        "n_head": n_head,
        "n_kv_head": n_kv_head,
        "n_embd": n_embd,
        "n_hidden": _int(meta, f"{arch}.feed_forward_length", src),
        "rope_theta": _float(meta, f"{arch}.rope.freq_base", src, default=10000.0),
        "rms_norm_eps": _float(meta, f"{arch}.attention.layer_norm_rms_epsilon", src),
        "tie_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "dropout": 0.0,
    }


def _tensors(reader, arch: str, cfg: dict, src: str) -> dict[str, GGUFTensor]:
    C, hs, L = cfg["n_embd"], cfg["n_embd"] // cfg["n_head"], cfg["n_layer"]
    kv = cfg["n_kv_head"] * hs
    shapes = {
        "token_embd.weight": (cfg["vocab_size"], C), "output_norm.weight": (C,), "output.weight": (cfg["vocab_size"], C),
        "blk.{i}.attn_norm.weight": (C,), "blk.{i}.attn_q.weight": (C, C), "blk.{i}.attn_k.weight": (kv, C),
        "blk.{i}.attn_v.weight": (kv, C), "blk.{i}.attn_output.weight": (C, C), "blk.{i}.ffn_norm.weight": (C,),
        "blk.{i}.ffn_gate.weight": (cfg["n_hidden"], C), "blk.{i}.ffn_up.weight": (cfg["n_hidden"], C),
        "blk.{i}.ffn_down.weight": (C, cfg["n_hidden"]),
        "blk.{i}.attn_q.bias": (C,), "blk.{i}.attn_k.bias": (kv,), "blk.{i}.attn_v.bias": (kv,),
    }
    table = dict(TENSOR_NAMES)
    if cfg["attention_bias"]:
        table |= BIAS_NAMES
    if cfg["tie_embeddings"]:
        del table["output.weight"]
    expected = {}
    for pattern, hf in table.items():
        for i in (range(L) if "{i}" in pattern else [None]):
            expected[pattern.format(i=i)] = (hf.format(i=i), shapes[pattern])
    permute = {"attn_q": cfg["n_head"], "attn_k": cfg["n_kv_head"]} if arch == "llama" else {}
    out = {}
    for t in reader.tensors:
        if t.name not in expected:
            raise CheckpointError(f"{src}: tensor {t.name} has no place in numformer's {arch} model (it does not "
                                  f"implement what it is for)")
        hf, shape = expected.pop(t.name)
        kind = t.tensor_type.name
        if kind not in READABLE_TYPES:
            raise CheckpointError(f"{src}: tensor {t.name} is stored as {kind}, a type numformer cannot read (it reads "
                                  f"{', '.join(READABLE_TYPES)})")
        got = tuple(int(d) for d in reversed(t.shape.tolist()))          # GGUF lists dimensions innermost first
        if got != shape:
            raise CheckpointError(f"{src}: tensor {t.name} has shape {list(got)}, the metadata asks for {list(shape)}")
        part = t.name.split(".")[-2] if t.name.startswith("blk.") else None
        out[hf] = GGUFTensor(t.name, kind, shape, t.data, permute.get(part))
    if expected:
        missing = sorted(expected, key=lambda n: (len(n), n))
        raise CheckpointError(f"{src}: tensor {missing[0]} is missing" + (f" ({len(missing) - 1} more)" if len(missing) > 1 else ""))
    return out


# ----------------------------------------------------------------------------- tensors

def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (adjacent rotary pairs) back to Hugging Face's (halves): within
    each of the `heads` heads, GGUF row 2j + s is HF row s·hs/2 + j. w: (heads·hs, ...) rows;
    works the same on float rows and on rows of quantized blocks."""
    hs = w.shape[0] // heads
    return w.reshape(heads, hs // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_float32(t: GGUFTensor, src: str) -> np.ndarray:
    """t as float32 (shape t.shape), dequantized and unpermuted; CheckpointError if a value is not
    finite."""
    if t.kind in FLOAT_TYPES:
        w = np.asarray(t.data).astype(np.float32).reshape(t.shape)
    elif t.kind == "BF16":
        w = quant.bf16_values(np.ascontiguousarray(t.data).view(np.uint16)).reshape(t.shape)
    else:
        w = quant.block_dequantize(t.data, t.kind).reshape(t.shape)
    if t.heads:
        w = unpermute_rows(w, t.heads)
    if not np.isfinite(w).all():
        raise CheckpointError(f"{src}: tensor {t.gguf_name} holds values that are not finite (NaN or infinity)")
    return np.ascontiguousarray(w)


def tensor_blocks(t: GGUFTensor) -> np.ndarray:
    """t's quantized rows (rows, row bytes) uint8 as the file holds them, unpermuted (a copy only
    then; otherwise the mapped file itself)."""
    raw = t.data.reshape(t.shape[0], -1)
    return np.ascontiguousarray(unpermute_rows(raw, t.heads)) if t.heads else raw


# ----------------------------------------------------------------------------- chat

def chat_info(meta: Metadata, src: str) -> tuple[ChatSettings, dict[str, str]]:
    """The chat template and the ids that end the assistant's turn (the eos token, and llama.cpp's
    eot and eom tokens where the file names them); and the special tokens by role."""
    tokens = meta.get("tokenizer.ggml.tokens") or []
    template = meta.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{src}: tokenizer.chat_template is not text")

    def valid(i):
        return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tokens)

    roles = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
             "pad_token": "padding_token_id"}
    named = {role: tokens[meta.get(f"tokenizer.ggml.{key}")] for role, key in roles.items()
             if valid(meta.get(f"tokenizer.ggml.{key}"))}
    ends = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        i = meta.get(f"tokenizer.ggml.{key}")
        if valid(i) and i not in ends:
            ends.append(i)
    return ChatSettings(template, ends), named


def describe(model: GGUFModel) -> str:
    """One line: name, architecture, size, weight type."""
    c = model.config
    n = sum(int(np.prod(t.shape)) for t in model.tensors.values())
    name = f"{model.name} " if model.name else ""
    count = f"{n / 1e6:.0f}M" if n >= 10e6 else f"{n / 1e6:.2f}M"
    return (f"{name}({model.arch}, {count} parameters, {c['n_layer']} layers, {c['n_head']} heads / "
            f"{c['n_kv_head']} kv, {c['n_embd']} wide, {model.file_type} weights)")


__all__ = ["GGUFModel", "GGUFTensor", "read_gguf", "is_gguf", "unpermute_rows", "tensor_float32", "tensor_blocks",
           "chat_info", "describe"]
