"""GPT-2 checkpoints in and out of Hugging Face format.

Import reads a Hugging Face GPT-2 folder (config.json + model.safetensors, or a sharded
model.safetensors.index.json) into numformer's config, names and layout (`read_hf_gpt2`), from
which `GPT.from_hf` builds the model and `numformer convert --from_hf` writes a checkpoint; export
writes such a folder from a numformer checkpoint, which
`transformers.GPT2LMHeadModel.from_pretrained(folder)` loads and which gives the same logits.
This module deals in configs and tensors and never imports the model (numformer.model.gpt
imports it).

Tensors. The names are the same on both sides; four weights per block change layout, because
GPT-2 stores them for its Conv1D layer (y = x·W + b, W [in, out]) and numformer stores every
weight as PyTorch's Linear does (y = x·Wᵀ + b, W (out, in)).

    Hugging Face GPT-2 (model.safetensors)          numformer (model.safetensors)
    name                                 layout     name                                layout
    ----------------------------------------------  ------------------------------------------
    transformer.wte.weight               (V, C)     transformer.wte.weight              (V, C)
    transformer.wpe.weight               (T, C)     transformer.wpe.weight              (T, C)
    transformer.h.{i}.ln_1.weight, .bias (C,)       same names                          (C,)
    transformer.h.{i}.attn.c_attn.weight (C, 3C)    transformer.h.{i}.attn.c_attn.weight (3C, C)  transposed
    transformer.h.{i}.attn.c_attn.bias   (3C,)      same name                           (3C,)
    transformer.h.{i}.attn.c_proj.weight (C, C)     transformer.h.{i}.attn.c_proj.weight (C, C)   transposed
    transformer.h.{i}.attn.c_proj.bias   (C,)       same name                           (C,)
    transformer.h.{i}.ln_2.weight, .bias (C,)       same names                          (C,)
    transformer.h.{i}.mlp.c_fc.weight    (C, 4C)    transformer.h.{i}.mlp.c_fc.weight   (4C, C)   transposed
    transformer.h.{i}.mlp.c_fc.bias      (4C,)      same name                           (4C,)
    transformer.h.{i}.mlp.c_proj.weight  (4C, C)    transformer.h.{i}.mlp.c_proj.weight (C, 4C)   transposed
    transformer.h.{i}.mlp.c_proj.bias    (C,)       same name                           (C,)
    transformer.ln_f.weight, .bias       (C,)       same names                          (C,)
    lm_head.weight                       (V, C)     not stored: the head is tied to wte
    transformer.h.{i}.attn.bias,         buffers    not stored: the causal mask is built
      transformer.h.{i}.attn.masked_bias                by the attention op

    T = n_positions = block_size, C = n_embd, V = vocab_size; the q, k, v thirds of c_attn and the
    split into heads are the same on both sides (numformer's mha follows GPT-2).

On import the `transformer.` prefix is optional (a GPT2Model saves without it). `lm_head.weight`
is usually absent (transformers drops the tied copy); if present it must equal wte exactly, since
numformer always ties the head. Attention-mask buffers of older files are ignored. Any other
tensor is an error that names it, as are a missing tensor, a wrong shape, a non-float or
non-finite tensor. Float16, bfloat16 (widened exactly) or float64 files are converted to the dtype asked for (float32 by
default). Pickle files (pytorch_model.bin, *.pt, *.pth) are refused and never opened: loading a
pickle can run arbitrary code.

Config (config.json of Hugging Face -> numformer's GPTConfig):

    model_type            must be "gpt2"
    vocab_size            vocab_size
    n_positions           block_size
    n_layer, n_head, n_embd  the same         (these five keys are required)
    layer_norm_epsilon    layer_norm_eps      (default 1e-5)
    activation_function   gelu: "gelu_new", "gelu_pytorch_tanh", "gelu_fast" -> "tanh",
                          "gelu" -> "exact"   (default "gelu_new"; others are refused)
    resid_pdrop, embd_pdrop, attn_pdrop   dropout = 0 at import (a note says so); export
                          writes numformer's one dropout rate into all three
    (fixed)               pos_encoding "learned", bias True
    refused unless at the GPT-2 default: scale_attn_weights true,
    scale_attn_by_inverse_layer_idx false, reorder_and_upcast_attn false, add_cross_attention
    false, n_inner null or 4·n_embd, tie_word_embeddings true (or an lm_head equal to wte).

Tokenizer. A numformer checkpoint carries its tokenizer. If the Hugging Face folder has a
tokenizer.json holding a BPE model (GPT-2's byte-level BPE is one), import wraps it as numformer's
BPETokenizer, so `numformer sample` works on the imported checkpoint; otherwise the checkpoint
stores no tokenizer and a note says so. Export writes tokenizer.json for a BPE tokenizer (the
Hugging Face document it wraps). A character tokenizer has no Hugging Face equivalent: export
writes numformer's own tokenizer document beside the Hugging Face files as
numformer_tokenizer.json (transformers ignores it), and import reads it back, so a character-level
model survives the round trip and can still be sampled. If the tokenizer has "<|endoftext|>", its
id becomes bos/eos_token_id.

GPT-2's original folders have no tokenizer.json but vocab.json (token -> id) and merges.txt (the
merge rules, in order): from those two files import builds GPT-2's byte-level BPE (GPT-2's
pre-tokenizer regex, bytes as printable characters, the merges applied by rank, <|endoftext|> as a
special token) with the `tokenizers` package, and stores it in the checkpoint like any other
BPETokenizer (and export writes it as tokenizer.json). Tokenizer files that are there but cannot
be used (not JSON, string or repeated ids, a merge of unknown tokens, a FIFO, ...) are left out
with a note that names the file and says why; `train --init_from` reports that reason.

Export choices.
- Sinusoidal positions are converted, exactly. numformer computes x0 = s·wte[idx] + P', where P'
  is its fixed position table (the sin/cos values divided by √C, see numformer.model.gpt) and
  s = model.embed_scale (1 unless the config's sinusoidal_form is "paper"), and logits = LN_f(x)·wteᵀ. GPT-2
  computes x0 = wte'[idx] + wpe and logits = LN_f'(x)·wte'ᵀ with the same tied wte'. Taking
  wpe = P' (block_size rows), and when s ≠ 1 wte' = s·wte and LN_f' = LN_f with gain and bias
  divided by s, gives the same x0 and, since (LN(x)·g/s + b/s)·(s·wte)ᵀ = (LN(x)·g + b)·wteᵀ, the
  same logits (up to float rounding, ~1e-7 relative). Positions become a learned table that
  starts at the fixed values, so re-importing gives a learned-position numformer model, not the
  original checkpoint.
- bias=False checkpoints are exported with zero biases (GPT-2 always has them); a zero bias adds
  nothing, so the logits are the same. Re-importing gives a bias=True model with zero biases.
- A checkpoint with low-rank adapters (LoRA) is exported with each adapter merged into its
  weight, W' = W + (α/r)·B A (numformer.model.adapters), so transformers loads a plain GPT-2 that
  computes what numformer computes with the adapters applied (up to float rounding).
- The output folder is written atomically (temporary sibling folder, then rename), by the same
  writer as numformer's checkpoints (numformer.checkpoint.write_folder).

Never replacing what is there. Both directions refuse an existing non-empty --out unless
`overwrite` is given, and even then replace only what numformer wrote itself: on import a
numformer checkpoint (a training checkpoint loses its optimizer and RNG state with it), on export
an earlier export (its model.safetensors says producer "numformer" and it holds nothing else than
the files export writes). A file, a symbolic link or any other folder is never replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from numformer.checkpoint import load_checkpoint, read_json, write_folder
from numformer.data.tokenizer import BPETokenizer
from numformer.errors import CheckpointError, DataError
from numformer.interop.hf_folder import (HF_CONFIG, HF_TOKENIZER, HF_WEIGHTS, LEFT_OUT, NEEDED,
                                         NF_TOKENIZER, PRODUCER, check_before_reading, check_export_target,
                                         check_float, check_hf_folder, check_import_target, is_own_export,
                                         problem_of, read_own_tokenizer, read_tokenizer_document, read_weights,
                                         weights_source)
from numformer.model.adapters import merged
from numformer.model.config import GPTConfig, InvalidConfig, position_terms
from numformer.model.params import BIAS, GPT2, LINEAR, WEIGHT, Param, gpt_param_shapes
from numformer.model.serialize import saved_gpt, write_gpt

HF_VOCAB, HF_MERGES = "vocab.json", "merges.txt"  # GPT-2's original tokenizer files
EXPORT_FILES = frozenset({HF_CONFIG, HF_WEIGHTS, HF_TOKENIZER, NF_TOKENIZER})

TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # three codings of one formula
EXACT_GELUS = ("gelu",)
PDROPS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")



def is_conv1d(param: Param) -> bool:
    """True for the weights GPT-2 stores for its Conv1D layer, [in, out]: those of the linear maps
    in its blocks. numformer stores them (out, in)."""
    return param.kind == LINEAR and param.part == WEIGHT and param.block is not None


@dataclass
class HFImport:
    """What `read_hf_gpt2` found: a config, tensors in numformer's names and layout, the
    tokenizer as numformer JSON text ("null" if none), and notes for the user."""

    config: GPTConfig
    tensors: dict[str, np.ndarray]
    tokenizer: str
    notes: list[str] = field(default_factory=list)
    tokenizer_problem: str | None = None  # why the folder's tokenizer files cannot be used (one line)


# ============================================================================================ import


def read_hf_gpt2(folder, dtype=np.float32) -> HFImport:
    """Read a Hugging Face GPT-2 folder into numformer's names, layout and `dtype`."""
    folder = Path(folder)
    check_hf_folder(folder)
    config_file = folder / HF_CONFIG
    hf = read_json(config_file, NEEDED)
    config, notes = gpt_config_from_hf(hf, str(config_file))
    check_before_reading(folder, config.n_layer, "n_layer", GPT2.block_pattern, config_file, np.dtype(dtype).itemsize)
    weights = read_weights(folder)
    tensors = tensors_from_hf(weights, config, dtype=np.dtype(dtype),
                              tied=hf.get("tie_word_embeddings", True) is not False, source=weights_source(folder))
    tokenizer, note = _read_tokenizer(folder, config.vocab_size)
    if note:
        notes.append(note)
    return HFImport(config=config, tensors=tensors, tokenizer=tokenizer, notes=notes, tokenizer_problem=problem_of(note))


def import_hf_gpt2(folder, out, dtype=np.float32, *, overwrite: bool = False) -> list[str]:
    """`numformer convert --from_hf FOLDER --out OUT`: write a numformer checkpoint; returns notes.
    (`GPT.from_hf(FOLDER)` gives the model itself.)

    An existing checkpoint at OUT is replaced only with overwrite=True; anything else there that
    is not an empty folder is refused either way."""
    check_import_target(Path(out), overwrite)
    imp = read_hf_gpt2(folder, dtype=dtype)
    write_gpt(out, imp.config, imp.tensors, dtype=dtype,
              tokenizer=imp.tokenizer if imp.tokenizer != "null" else None)
    return imp.notes


def gpt_config_from_hf(hf, source: str = HF_CONFIG):
    """GPTConfig for a Hugging Face GPT-2 config dict, and notes; CheckpointError naming the key
    for anything that is not GPT-2 or that numformer's GPT cannot compute."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source}: expected a JSON object, found {type(hf).__name__}")
    if "model_type" not in hf:
        hint = " (it looks like a numformer checkpoint: use --to_hf to export it)" if "_numformer" in hf else ""
        raise CheckpointError(f"{source}: no 'model_type' key; not a Hugging Face GPT-2 config{hint}")
    if hf["model_type"] != "gpt2":
        raise CheckpointError(f"{source}: model_type {hf['model_type']!r} is not 'gpt2'; numformer's GPT reads "
                              "GPT-2 checkpoints (a Llama, Mistral or Qwen2 is numformer.interop.llama's)")
    shape = {}
    for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
        if key not in hf:
            raise CheckpointError(f"{source}: missing key {key!r}")
        value = hf[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{source}: {key!r} must be a positive integer, found {value!r}")
        shape[key] = value

    act = hf.get("activation_function", "gelu_new")
    if act in TANH_GELUS:
        gelu = "tanh"
    elif act in EXACT_GELUS:
        gelu = "exact"
    else:
        raise CheckpointError(f"{source}: activation_function {act!r} is not supported "
                              f"(numformer computes {', '.join(TANH_GELUS + EXACT_GELUS)})")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < float("inf"):
        raise CheckpointError(f"{source}: 'layer_norm_epsilon' must be a positive finite number, found {eps!r}")
    # a flag written as text ("false") would otherwise read as true
    for key in ("tie_word_embeddings", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                "reorder_and_upcast_attn", "add_cross_attention"):
        if key in hf and not isinstance(hf[key], bool):
            raise CheckpointError(f"{source}: {key!r} must be true or false, found {hf[key]!r}")

    # Options that change the function GPT-2 computes; numformer computes only the default.
    unsupported = {
        "scale_attn_weights": (True, "numformer always scales attention scores by 1/√hs"),
        "scale_attn_by_inverse_layer_idx": (False, "numformer does not scale attention by 1/(layer+1)"),
        "reorder_and_upcast_attn": (False, "numformer does not reorder or upcast the attention product"),
        "add_cross_attention": (False, "numformer's GPT is a decoder without cross-attention"),
    }
    for key, (default, why) in unsupported.items():
        if key in hf and hf[key] != default:
            raise CheckpointError(f"{source}: {key}={json.dumps(hf[key])} is not supported ({why})")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * shape["n_embd"]:
        raise CheckpointError(f"{source}: n_inner={n_inner!r} is not supported "
                              f"(numformer's MLP width is 4·n_embd = {4 * shape['n_embd']})")

    notes = []
    pdrops = {k: hf.get(k, 0.1) for k in PDROPS}  # GPT-2's default is 0.1
    if any(p for p in pdrops.values()):
        listed = ", ".join(f"{k}={v}" for k, v in pdrops.items())
        notes.append(f"config.json has {listed}; the imported model has dropout 0 "
                     "(dropout only matters for training: set it in the config to fine-tune with it)")
    try:
        config = GPTConfig(vocab_size=shape["vocab_size"], block_size=shape["n_positions"],
                           n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                           dropout=0.0, bias=True, pos_encoding="learned", gelu=gelu,
                           layer_norm_eps=float(eps))
    except InvalidConfig as e:
        raise CheckpointError(f"{source}: {e}") from None
    return config, notes


def tensors_from_hf(tensors: dict[str, np.ndarray], config, dtype=np.dtype(np.float32),
                    tied: bool = True, source: str = HF_WEIGHTS) -> dict[str, np.ndarray]:
    """Hugging Face GPT-2 tensors -> numformer names, Linear layout and `dtype`, checked against
    `config`. Errors name the tensor as the file spells it."""
    top = GPT2.top                      # a GPT2Model saves its names without it
    prefixed = any(k.startswith(top) for k in tensors)
    spell = (lambda name: name) if prefixed else (lambda name: name[len(top):])

    found: dict[str, np.ndarray] = {}   # numformer name -> tensor
    spelled: dict[str, str] = {}        # numformer name -> the file's key
    lm_head = wte_raw = None
    for key, arr in tensors.items():
        if key == GPT2.head:
            lm_head = arr
            continue
        name = key if key.startswith(top) else top + key
        if name in found:
            raise CheckpointError(f"{source}: tensor {key} appears both with and without the '{top}' prefix")
        found[name], spelled[name] = arr, key

    out = {}
    wte = GPT2.name("wte")
    for p in GPT2.params(config):
        name = p.name
        if name not in found:
            raise CheckpointError(f"{source}: missing tensor {spell(name)} (config.json: n_layer={config.n_layer})")
        arr = found.pop(name)
        if name == wte:
            wte_raw = arr
        hf_shape = p.shape[::-1] if is_conv1d(p) else p.shape
        if tuple(arr.shape) != hf_shape:
            layout = " (GPT-2's Conv1D layout [in, out])" if is_conv1d(p) else ""
            raise CheckpointError(f"{source}: tensor {spell(name)} has shape {tuple(arr.shape)}, "
                                  f"config.json needs {hf_shape}{layout}")
        check_float(arr, spell(name), source)
        arr = arr.T if is_conv1d(p) else arr
        out[name] = np.ascontiguousarray(arr, dtype=dtype)
    leftover = [n for n in found if not GPT2.is_buffer(n)]
    if leftover:
        raise CheckpointError(f"{source}: unexpected tensor {spelled[leftover[0]]}: not part of a GPT-2 "
                              "language model (GPT2LMHeadModel)")

    if lm_head is not None:
        if tuple(lm_head.shape) != out[wte].shape:
            raise CheckpointError(f"{source}: tensor {GPT2.head} has shape {tuple(lm_head.shape)}, "
                                  f"config.json needs {out[wte].shape}")
        if not np.array_equal(lm_head, wte_raw):
            raise CheckpointError(f"{source}: {GPT2.head} differs from {spell(wte)}; numformer ties the "
                                  "LM head to the token embedding and cannot import an untied head")
    elif not tied:
        raise CheckpointError(f"{source}: config.json sets tie_word_embeddings false but the file has no "
                              f"{GPT2.head}; numformer ties the LM head to the token embedding")
    return out


def _read_tokenizer(folder: Path, vocab_size: int) -> tuple[str, str | None]:
    """(numformer tokenizer JSON or "null", note). A usable tokenizer.json is wrapped as numformer's
    BPETokenizer; anything else is left out with a note saying why."""
    own = read_own_tokenizer(folder, vocab_size)   # written by export for a character tokenizer
    if own is not None:
        return own
    file = folder / HF_TOKENIZER
    missing = (f"{folder} has no {HF_TOKENIZER}: the checkpoint stores no tokenizer, so "
               "`numformer sample` cannot turn its token ids into text")
    if not os.path.lexists(file):
        if os.path.lexists(folder / HF_VOCAB) or os.path.lexists(folder / HF_MERGES):
            return _read_vocab_and_merges(folder, vocab_size)
        return "null", missing
    doc, note = read_tokenizer_document(file)
    if note:
        return "null", note
    kind = (doc.get("model") or {}).get("type") if isinstance(doc, dict) and isinstance(doc.get("model"), dict) \
        else None
    if kind != "BPE":
        return "null", f"{file} holds a {kind or 'unknown'} model, not BPE{LEFT_OUT}"
    try:
        tok = BPETokenizer.from_hf_document(doc)
    except DataError as e:
        return "null", f"{file}: {e}{LEFT_OUT}"
    if tok.vocab_size > vocab_size:
        return "null", (f"{file} has {tok.vocab_size} tokens but the model only {vocab_size}"
                        f"{LEFT_OUT}")
    return tok.to_json(), None


def _read_vocab_and_merges(folder: Path, vocab_size: int) -> tuple[str, str | None]:
    """(numformer tokenizer JSON or "null", note) for GPT-2's vocab.json + merges.txt."""
    vocab, merges = folder / HF_VOCAB, folder / HF_MERGES
    for have, lack in ((vocab, merges), (merges, vocab)):
        if not os.path.lexists(lack):
            return "null", f"{folder} has {have.name} but no {lack.name}{LEFT_OUT}"
    try:
        tok = BPETokenizer.from_gpt2_files(vocab, merges)
    except DataError as e:
        return "null", f"{e}{LEFT_OUT}"
    if tok.vocab_size > vocab_size:
        return "null", (f"{vocab} has {tok.vocab_size} tokens but the model only {vocab_size}"
                        f"{LEFT_OUT}")
    return tok.to_json(), None


# ============================================================================================ export


def gpt_config_to_hf(config, dtype: str = "float32", eos_token_id: int | None = None) -> dict:
    """A Hugging Face GPT-2 config.json dict for a numformer GPTConfig (see the table above)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_inner": None,
        "activation_function": "gelu_new" if config.gelu == "tanh" else "gelu",
        "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,
    }


def tensors_to_hf(model) -> tuple[dict[str, np.ndarray], list[str]]:
    """A numformer GPT's weights as Hugging Face GPT-2 tensors (Conv1D layout, `transformer.`
    names, no lm_head), and notes. Sinusoidal positions and missing biases are rewritten into
    GPT-2's form exactly, as the module docstring derives."""
    return _hf_tensors(model.config, model.state_dict(), model.lora, model.dtype)


def _hf_tensors(cfg: GPTConfig, tensors: dict[str, np.ndarray], lora, dtype) -> tuple[dict[str, np.ndarray], list[str]]:
    """tensors_to_hf of a GPT with config `cfg`, named `tensors` (parameters and adapters), `lora`
    (a LoRAConfig or None) and `dtype`."""
    notes = []
    weights = merged(tensors, cfg, lora)                        # copies; adapters merged: W + (α/r)·B A
    if lora is not None:
        notes.append(f"the low-rank adapters (rank {lora.rank}, alpha {lora.alpha:g}, on "
                     f"{', '.join(lora.targets)}) are merged into the weights: W + (alpha/rank)·B A")
    exported = dataclasses.replace(cfg, bias=True, pos_encoding="learned")   # what GPT-2 has
    if not cfg.bias:
        shapes = gpt_param_shapes(dataclasses.replace(cfg, bias=True))
        for name, shape in shapes.items():
            if name not in weights:
                weights[name] = np.zeros(shape, dtype=dtype)
        weights = {name: weights[name] for name in shapes}  # GPT-2's order
        notes.append("the checkpoint has no biases (bias=False); GPT-2 always has them, so they are "
                     "exported as zeros, which adds nothing to any output")
    if cfg.pos_encoding == "sinusoidal":
        s, pe = position_terms(cfg, dtype)                      # as the model adds them (model/gpt.py)
        wte, wpe = GPT2.name("wte"), GPT2.name("wpe")
        if s != 1.0:
            weights[wte] *= s                                   # the same rounding as the forward pass
            weights[GPT2.name("ln_f", WEIGHT)] /= s             # (LN·g/s + b/s)·(s·wte)ᵀ = (LN·g + b)·wteᵀ
            weights[GPT2.name("ln_f", BIAS)] /= s
        weights = {wte: weights.pop(wte), wpe: pe, **weights}
        notes.append("sinusoidal positions exported as GPT-2's learned table wpe (numformer's fixed "
                     "sin/cos/√C values)" + (f"; wte is scaled by {s:.6g} and ln_f's gain and bias by "
                                             f"1/{s:.6g} so the logits are the same" if s != 1.0 else "")
                     + "; re-importing gives a learned-position model")
    conv1d = {p.name for p in GPT2.params(exported) if is_conv1d(p)}
    hf = {name: np.ascontiguousarray(arr.T if name in conv1d else arr) for name, arr in weights.items()}
    return hf, notes


def export_hf_gpt2(checkpoint, out, *, overwrite: bool = False) -> list[str]:
    """`numformer convert --to_hf CHECKPOINT --out OUT`: write config.json, model.safetensors (and
    tokenizer.json for a BPE tokenizer, numformer_tokenizer.json for a character tokenizer) that
    transformers loads as GPT2LMHeadModel. Returns notes.

    An earlier export at OUT is replaced only with overwrite=True; anything else there that is
    not an empty folder is refused either way."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_export_target(out, overwrite, EXPORT_FILES)
    saved = saved_gpt(load_checkpoint(checkpoint), source=str(checkpoint))   # its tokenizer, checked
    tensors, notes = _hf_tensors(saved.config, saved.tensors, saved.lora, saved.dtype)

    blobs = {HF_WEIGHTS: save(tensors, metadata={"format": "pt", "producer": PRODUCER})}
    eos = None
    tok_doc = json.loads(saved.tokenizer_json) if saved.tokenizer is not None else None
    if isinstance(tok_doc, dict) and tok_doc.get("type") == "bpe":
        hf_tok = tok_doc["hf"]
        blobs[HF_TOKENIZER] = json.dumps(hf_tok, ensure_ascii=False, indent=2).encode("utf-8")
        for added in hf_tok.get("added_tokens") or []:
            if added.get("content") == "<|endoftext|>":
                eos = added.get("id")
    elif tok_doc is not None:
        blobs[NF_TOKENIZER] = saved.tokenizer_json.encode("utf-8")
        notes.append(f"the checkpoint's {tok_doc.get('type')} tokenizer has no Hugging Face equivalent; it is "
                     f"written as {NF_TOKENIZER}, which `numformer convert --from_hf` reads back "
                     "(transformers ignores it)")
    config = gpt_config_to_hf(saved.config, dtype=saved.dtype.name, eos_token_id=eos)
    blobs[HF_CONFIG] = (json.dumps(config, indent=2) + "\n").encode("utf-8")
    write_folder(out, blobs, is_ours=lambda folder: is_own_export(folder, EXPORT_FILES))
    return notes


__all__ = [
    "HFImport", "read_hf_gpt2", "import_hf_gpt2", "gpt_config_from_hf", "tensors_from_hf",
    "gpt_config_to_hf", "tensors_to_hf", "export_hf_gpt2", "is_conv1d",
]
