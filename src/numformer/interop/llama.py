"""Llama-family checkpoints in and out of Hugging Face format: LlamaForCausalLM (Llama 2 and 3,
TinyLlama, SmolLM), MistralForCausalLM without a sliding window, and Qwen2ForCausalLM.

Import reads a Hugging Face folder (config.json; model.safetensors, or shards listed in
model.safetensors.index.json, in float32, float16 or bfloat16; tokenizer.json) into numformer's
LlamaConfig and names (`read_hf_llama`), from which `load_hf_llama` builds the model and
`numformer convert --from_hf` writes a checkpoint; export writes such a folder from a numformer
Llama checkpoint, which `transformers.AutoModelForCausalLM.from_pretrained(folder)` loads and which
gives the same logits. This module imports the model; the model never imports it.

Tensors. The names and layouts are the same on both sides (numformer.model.params.LLAMA spells
them as Hugging Face does; every weight is PyTorch's Linear (out, in)):

    model.embed_tokens.weight                          (V, C)
    model.layers.{i}.input_layernorm.weight            (C,)      RMSNorm gain
    model.layers.{i}.self_attn.q_proj.weight           (nh·hs, C)      .bias (Qwen2)
    model.layers.{i}.self_attn.k_proj.weight           (nkv·hs, C)     .bias (Qwen2)
    model.layers.{i}.self_attn.v_proj.weight           (nkv·hs, C)     .bias (Qwen2)
    model.layers.{i}.self_attn.o_proj.weight           (C, nh·hs)
    model.layers.{i}.post_attention_layernorm.weight   (C,)
    model.layers.{i}.mlp.gate_proj.weight, up_proj     (H, C)
    model.layers.{i}.mlp.down_proj.weight              (C, H)
    model.norm.weight                                  (C,)
    lm_head.weight                                     (V, C)    absent when the head is tied

Older files' model.layers.{i}.self_attn.rotary_emb.inv_freq (RoPE's ω, which transformers
recomputes from config.json) is ignored. With tie_word_embeddings, an lm_head.weight in the file
must equal the embedding (transformers ties the two); without it, lm_head.weight is required. Any
other tensor, a missing one, a wrong shape, a non-float or non-finite tensor is an error that
names it. float16 and bfloat16 are widened exactly to the dtype asked for (float32 by default).

Config (config.json -> LlamaConfig), with transformers' default for each key that is absent:

    model_type                 "llama", "mistral" or "qwen2"; architectures, when given, one of
                               LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
    vocab_size, hidden_size (n_embd), intermediate_size (n_hidden), num_hidden_layers (n_layer),
    num_attention_heads (n_head)                  required
    num_key_value_heads        n_kv_head (default: n_head; Mistral's 8, Qwen2's 32)
    max_position_embeddings    block_size (default 2048; Mistral 131072, Qwen2 32768)
    rms_norm_eps               rms_norm_eps (default 1e-6)
    rope_theta, or rope_parameters / rope_scaling's rope_theta   rope_theta (default 10000)
    tie_word_embeddings        tie_embeddings (default false)
    (Qwen2)                    attention_bias true: q, k and v have biases
    attention_dropout          dropout 0 at import (a note says so when it is not 0)

Refused in one line that names the key, because numformer would compute something else: a
rope_scaling / rope_parameters type other than "default" (linear, dynamic, yarn, llama3, ...) or
a partial_rotary_factor; a sliding window that is active within the context (Mistral's
sliding_window, Qwen2's with use_sliding_window, below max_position_embeddings); a hidden_act other
than silu; a head_dim other than hidden_size / num_attention_heads; Llama's attention_bias (which
puts a bias on o_proj too) and mlp_bias; quantized weights (quantization_config); and what no
Llama can have (heads that do not divide the width, an odd head size).

Tokenizer: numformer.interop.hf_tokenizer (tokenizer.json as transformers applies it, stored in
the checkpoint; a note when it is left out).

Export choices. The model type is "qwen2" when the checkpoint has q/k/v biases, else "llama" (an
imported Mistral is exported as the Llama it computes). config.json gives rope_theta both as
transformers 4 reads it and in transformers 5's rope_parameters. Adapters (LoRA) are merged into
their weights, W + (α/r)·B A. The weights keep the checkpoint's dtype. The output folder is written
atomically (numformer.checkpoint.write_folder) and never replaces anything numformer did not write
(numformer.interop.hf_folder).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from numformer.checkpoint import CONFIG_FILE, load_checkpoint, read_json, write_folder
from numformer.data.tokenizer import from_json
from numformer.errors import CheckpointError
from numformer.interop.hf_folder import (HF_CONFIG, HF_TOKENIZER, HF_TOKENIZER_CONFIG, HF_WEIGHTS, NEEDED, NF_TOKENIZER,
                                         PRODUCER, check_before_reading, check_export_target, check_float,
                                         check_hf_folder, check_import_target, is_own_export, problem_of,
                                         read_weights, weights_source)
from numformer.interop.hf_tokenizer import export_tokenizer_files, read_hf_tokenizer
from numformer.model.adapters import merged
from numformer.model.config import InvalidConfig, LlamaConfig
from numformer.model.llama import Llama
from numformer.model.params import LLAMA
from numformer.model.serialize import checkpoint_family, saved_model, write_model

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
MODEL_TYPES = tuple(ARCHITECTURES)
EXPORT_FILES = frozenset({HF_CONFIG, HF_WEIGHTS, HF_TOKENIZER, HF_TOKENIZER_CONFIG, NF_TOKENIZER})

# transformers' defaults where a key is absent, by model type (its LlamaConfig, MistralConfig, Qwen2Config)
_DEFAULT_KV_HEADS = {"llama": None, "mistral": 8, "qwen2": 32}     # None: num_attention_heads
_DEFAULT_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768}
_DEFAULT_SLIDING_WINDOW = 4096
_DEFAULT_MAX_WINDOW_LAYERS = 28                                      # Qwen2's
SILUS = ("silu", "swish")                                            # two names of one function
# numformer's field -> the config.json key it comes from, for errors about a value
_KEY_OF = {"vocab_size": "vocab_size", "block_size": "max_position_embeddings", "n_layer": "num_hidden_layers",
           "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads", "n_embd": "hidden_size",
           "n_hidden": "intermediate_size", "rope_theta": "rope_theta", "rms_norm_eps": "rms_norm_eps"}


@dataclass
class LlamaImport:
    """What `read_hf_llama` found: the config, tensors in numformer's names and `dtype`, the
    tokenizer as numformer JSON text ("null" if none), the folder's model_type, notes for the
    user, and why tokenizer files that are there cannot be used (None if they can)."""

    config: LlamaConfig
    tensors: dict[str, np.ndarray]
    tokenizer: str
    model_type: str
    notes: list[str] = field(default_factory=list)
    tokenizer_problem: str | None = None


# ============================================================================================ import


def read_hf_llama(folder, dtype=np.float32) -> LlamaImport:
    """Read a Hugging Face Llama, Mistral or Qwen2 folder into numformer's config, names and `dtype`."""
    folder = Path(folder)
    check_hf_folder(folder)
    config_file = folder / HF_CONFIG
    hf = read_json(config_file, NEEDED)
    config, notes = llama_config_from_hf(hf, str(config_file))
    check_before_reading(folder, config.n_layer, "num_hidden_layers", LLAMA.block_pattern, config_file,
                         np.dtype(dtype).itemsize)
    tensors = tensors_from_hf(read_weights(folder), config, dtype=np.dtype(dtype), source=weights_source(folder))
    tokenizer, note = read_hf_tokenizer(folder, hf["model_type"], config.vocab_size,
                                        config_class=hf.get("tokenizer_class"))
    if note:
        notes.append(note)
    return LlamaImport(config=config, tensors=tensors, tokenizer=tokenizer, model_type=hf["model_type"], notes=notes,
                       tokenizer_problem=problem_of(note))


def load_hf_llama(folder, dtype=np.float32) -> Llama:
    """The Llama of a Hugging Face folder, with its tokenizer as `model.tokenizer` (None if it has
    no usable one); `model.hf_notes` says what the import changed or left out, and
    `model.hf_tokenizer_problem` why tokenizer files that are there cannot be used (else None)."""
    imp = read_hf_llama(folder, dtype=dtype)
    model = Llama(imp.config, dtype=dtype, init=False)
    model.load_state_dict(imp.tensors, source=str(folder))
    model.tokenizer = from_json(imp.tokenizer) if imp.tokenizer != "null" else None
    model.hf_notes = imp.notes
    model.hf_tokenizer_problem = imp.tokenizer_problem
    return model


def import_hf_llama(folder, out, dtype=np.float32, *, overwrite: bool = False) -> list[str]:
    """`numformer convert --from_hf FOLDER --out OUT` for a Llama-family folder: write a numformer
    checkpoint; returns notes. An existing checkpoint at OUT is replaced only with overwrite=True;
    anything else there that is not an empty folder is refused either way."""
    check_import_target(Path(out), overwrite)
    imp = read_hf_llama(folder, dtype=dtype)
    write_model(out, imp.config, imp.tensors, dtype=dtype, tokenizer=imp.tokenizer if imp.tokenizer != "null" else None)
    return imp.notes


def llama_config_from_hf(hf, source: str = HF_CONFIG) -> tuple[LlamaConfig, list[str]]:
    """LlamaConfig for a Hugging Face Llama, Mistral or Qwen2 config dict, and notes; CheckpointError
    naming the key for anything else, or anything numformer's Llama would compute differently."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source}: expected a JSON object, found {type(hf).__name__}")
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        hint = " (it looks like a numformer checkpoint: use --to_hf to export it)" if "_numformer" in hf else ""
        raise CheckpointError(f"{source}: model_type {kind!r} is not one numformer converts "
                              f"({', '.join(('gpt2',) + MODEL_TYPES)}){hint}")
    architectures = hf.get("architectures")
    if architectures is not None:
        if not isinstance(architectures, list) or not architectures or \
                any(a not in ARCHITECTURES.values() for a in architectures):
            raise CheckpointError(f"{source}: architectures {architectures!r} is not a causal language model numformer "
                                  f"reads ({', '.join(ARCHITECTURES.values())})")

    def integer(key, default=None, required=False):
        """hf[key], a positive integer; `default` when the key is absent (transformers' default)."""
        if key not in hf:
            if required:
                raise CheckpointError(f"{source}: missing key {key!r}")
            return default
        value = hf[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{source}: {key!r} must be a positive integer, found {value!r}")
        return value

    def flag(key, default):
        value = hf.get(key, default)
        if not isinstance(value, bool):            # the text "false" would read as true
            raise CheckpointError(f"{source}: {key!r} must be true or false, found {value!r}")
        return value

    def number(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise CheckpointError(f"{source}: {key!r} must be a positive finite number, found {value!r}")
        return float(value)

    C = integer("hidden_size", required=True)
    n_head = integer("num_attention_heads", required=True)
    shape = {"vocab_size": integer("vocab_size", required=True), "n_embd": C, "n_head": n_head,
             "n_layer": integer("num_hidden_layers", required=True),
             "n_hidden": integer("intermediate_size", required=True),
             "n_kv_head": (integer("num_key_value_heads", _DEFAULT_KV_HEADS[kind])       # null: one per query head
                           if hf.get("num_key_value_heads", 0) is not None else None) or n_head,
             "block_size": integer("max_position_embeddings", _DEFAULT_POSITIONS[kind])}
    if "quantization_config" in hf:
        raise CheckpointError(f"{source}: quantization_config: the weights are quantized; numformer reads float32, "
                              "float16 or bfloat16 weights")
    act = hf.get("hidden_act", "silu")
    if act not in SILUS:
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (numformer's SwiGLU uses SiLU: "
                              f"{', '.join(SILUS)})")
    head_dim = hf.get("head_dim")
    if head_dim is not None and (isinstance(head_dim, bool) or head_dim * n_head != C):
        raise CheckpointError(f"{source}: head_dim {head_dim!r} is not supported (numformer's head size is "
                              f"hidden_size / num_attention_heads = {C / n_head:g})")
    theta = _rope_theta(hf, source, number)
    if kind == "llama":
        for key, why in (("attention_bias", "a bias on q_proj, k_proj, v_proj and o_proj"),
                         ("mlp_bias", "biases in the MLP")):
            if flag(key, False):
                raise CheckpointError(f"{source}: {key} true is not supported (Llama's {why}; numformer's attention "
                                      "biases are Qwen2's, on q, k and v only)")
    _refuse_sliding_window(hf, kind, shape["block_size"], shape["n_layer"], source, integer, flag)
    notes = []
    attn_dropout = hf.get("attention_dropout", 0.0)
    if isinstance(attn_dropout, bool) or not isinstance(attn_dropout, (int, float)) or not 0 <= attn_dropout < 1:
        raise CheckpointError(f"{source}: 'attention_dropout' must be a number in [0, 1), found {attn_dropout!r}")
    if attn_dropout:
        notes.append(f"config.json has attention_dropout={attn_dropout}; the imported model has dropout 0 "
                     "(dropout only matters for training: set it in the config to fine-tune with it)")
    eps = number("rms_norm_eps", hf.get("rms_norm_eps", 1e-6))
    try:
        config = LlamaConfig(**shape, rope_theta=theta, rms_norm_eps=eps,
                             tie_embeddings=flag("tie_word_embeddings", False), attention_bias=kind == "qwen2",
                             dropout=0.0)
    except InvalidConfig as e:
        raise CheckpointError(f"{source}: {_KEY_OF.get(e.key, e.key)}: {e}") from None
    return config, notes


def _rope_theta(hf: dict, source: str, number) -> float:
    """RoPE's θ from rope_scaling / rope_parameters (transformers 5 reads rope_scaling first) or
    rope_theta; CheckpointError for a RoPE other than the original one."""
    for key in ("rope_scaling", "rope_parameters"):
        params = hf.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise CheckpointError(f"{source}: {key} must be an object, found {params!r}")
        if any(isinstance(v, dict) for v in params.values()):
            raise CheckpointError(f"{source}: {key} gives a RoPE per layer type, which numformer does not support")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise CheckpointError(f"{source}: {key} type {kind!r} is not supported (numformer's RoPE is the original "
                                  "one, rope_type 'default'); its result would differ")
        factor = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
        if factor is not None and factor != 1:
            raise CheckpointError(f"{source}: partial_rotary_factor {factor!r} is not supported (numformer rotates "
                                  "every channel of a head)")
        if "rope_theta" in params:
            return number(f"{key}.rope_theta", params["rope_theta"])
        break
    factor = hf.get("partial_rotary_factor")
    if factor is not None and factor != 1:
        raise CheckpointError(f"{source}: partial_rotary_factor {factor!r} is not supported (numformer rotates every "
                              "channel of a head)")
    return number("rope_theta", hf.get("rope_theta", 10_000.0))


def _refuse_sliding_window(hf: dict, kind: str, block_size: int, n_layer: int, source: str, integer, flag) -> None:
    """CheckpointError if some layer attends through a sliding window narrower than the context:
    Mistral's sliding_window (on by default at 4096), Qwen2's with use_sliding_window, on the
    layers from max_window_layers on (or those layer_types marks "sliding_attention")."""
    if kind == "llama":
        return
    if kind == "qwen2" and not flag("use_sliding_window", False):
        return
    window = integer("sliding_window", _DEFAULT_SLIDING_WINDOW) if hf.get("sliding_window", 0) is not None else None
    if window is None or window >= block_size:                  # null: no window
        return
    if kind == "qwen2":
        types = hf.get("layer_types")
        if types is not None:
            if not isinstance(types, list) or any(t not in ("full_attention", "sliding_attention") for t in types):
                raise CheckpointError(f"{source}: layer_types must list 'full_attention' or 'sliding_attention' for each "
                                      f"layer, found {types!r}")
            sliding = "sliding_attention" in types
        else:
            sliding = integer("max_window_layers", _DEFAULT_MAX_WINDOW_LAYERS) < n_layer
        if not sliding:
            return
    raise CheckpointError(f"{source}: sliding_window {window} is active (smaller than max_position_embeddings "
                          f"{block_size}); numformer's attention sees the whole context, so its result would differ")


def tensors_from_hf(tensors: dict[str, np.ndarray], config: LlamaConfig, dtype=np.dtype(np.float32),
                    source: str = HF_WEIGHTS) -> dict[str, np.ndarray]:
    """Hugging Face Llama tensors -> numformer's, in `dtype`, checked against `config`; errors name
    the tensor."""
    found = dict(tensors)
    out = {}
    for p in LLAMA.params(config):
        if p.name not in found:
            hint = " (config.json: tie_word_embeddings false)" if p.name == LLAMA.head else ""
            raise CheckpointError(f"{source}: missing tensor {p.name}{hint}")
        arr = found.pop(p.name)
        if tuple(arr.shape) != p.shape:
            raise CheckpointError(f"{source}: tensor {p.name} has shape {tuple(arr.shape)}, config.json needs {p.shape}")
        check_float(arr, p.name, source)
        out[p.name] = np.ascontiguousarray(arr, dtype=dtype)
    embed = LLAMA.name("model.embed_tokens")
    if config.tie_embeddings and LLAMA.head in found:
        head = found.pop(LLAMA.head)
        if tuple(head.shape) != out[embed].shape or not np.array_equal(head.astype(dtype), out[embed]):
            raise CheckpointError(f"{source}: tensor {LLAMA.head} differs from {embed}, but config.json ties them "
                                  "(tie_word_embeddings true): transformers would use the embedding and drop it")
    leftover = [n for n in found if not LLAMA.is_buffer(n)]
    if leftover:
        raise CheckpointError(f"{source}: unexpected tensor {leftover[0]}: not part of a {'/'.join(ARCHITECTURES.values())}"
                              " for this config.json")
    return out


# ============================================================================================ export


def llama_config_to_hf(config: LlamaConfig, *, dtype: str = "float32", bos_token_id: int | None = None,
                       eos_token_id: int | None = None) -> dict:
    """A Hugging Face config.json dict for a numformer LlamaConfig: Qwen2's with attention biases,
    Llama's otherwise (see the module docstring)."""
    kind = "qwen2" if config.attention_bias else "llama"
    hf = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.n_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,                                            # transformers 4
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},  # transformers 5
        "tie_word_embeddings": config.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
        "torch_dtype": dtype,
    }
    if kind == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer)
    return hf


def export_hf_llama(checkpoint, out, *, overwrite: bool = False) -> list[str]:
    """`numformer convert --to_hf CHECKPOINT --out OUT` for a Llama checkpoint: write config.json,
    model.safetensors and the tokenizer files that transformers loads with
    AutoModelForCausalLM.from_pretrained / AutoTokenizer. Returns notes. An earlier export at OUT
    is replaced only with overwrite=True; anything else there that is not an empty folder is
    refused either way."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_export_target(out, overwrite, EXPORT_FILES)
    saved = saved_model(load_checkpoint(checkpoint), source=str(checkpoint), families=("llama",))
    cfg, notes = saved.config, []
    tensors = merged(saved.tensors, cfg, saved.lora)                 # copies; adapters merged: W + (α/r)·B A
    if saved.lora is not None:
        notes.append(f"the low-rank adapters (rank {saved.lora.rank}, alpha {saved.lora.alpha:g}, on "
                     f"{', '.join(saved.lora.targets)}) are merged into the weights: W + (alpha/rank)·B A")
    if cfg.dropout:
        notes.append(f"the checkpoint's dropout {cfg.dropout:g} is not exported (Hugging Face's Llama has attention "
                     "dropout only); the export has attention_dropout 0, which changes nothing but training")
    kind = "qwen2" if cfg.attention_bias else "llama"
    tok_json = saved.tokenizer_json if saved.tokenizer is not None else None
    blobs, ids, tok_notes = export_tokenizer_files(tok_json, kind)
    notes += tok_notes
    blobs[HF_WEIGHTS] = save({name: np.ascontiguousarray(t) for name, t in tensors.items()},
                             metadata={"format": "pt", "producer": PRODUCER})
    config = llama_config_to_hf(cfg, dtype=saved.dtype.name, **ids)
    blobs[HF_CONFIG] = (json.dumps(config, indent=2) + "\n").encode("utf-8")
    write_folder(out, blobs, is_ours=lambda folder: is_own_export(folder, EXPORT_FILES))
    return notes


def is_llama_checkpoint(checkpoint) -> bool:
    """Whether a numformer checkpoint folder's config.json names the Llama family (False for anything
    that cannot be read: the reader of the other family says why)."""
    try:
        doc = read_json(Path(checkpoint) / CONFIG_FILE)
    except CheckpointError:
        return False
    return checkpoint_family(doc) == "llama"


__all__ = [
    "LlamaImport", "read_hf_llama", "load_hf_llama", "import_hf_llama", "llama_config_from_hf", "tensors_from_hf",
    "llama_config_to_hf", "export_hf_llama", "is_llama_checkpoint", "MODEL_TYPES", "ARCHITECTURES",
]
