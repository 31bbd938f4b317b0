"""What numformer refuses in a Llama-family folder, each in one line naming the key, tensor or
file, through `numformer convert --from_hf` and `numformer train --init_from`: config features it
does not implement (a RoPE scaling, an active sliding window, another activation, another head
size, Llama's o_proj and MLP biases, quantized weights), configs no Llama can have, bad tensors,
pickles (never opened), and a missing shard. And what it accepts: a window as wide as the
context, old files' rotary buffers."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from numformer import cli
from numformer.interop.hf_folder import read_weights
from numformer.interop.llama import load_hf_llama
from numformer.reference.llama_folder import make_llama_folder
from tests.helpers import TEXT


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return {
        "llama": make_llama_folder(root / "llama", TEXT, arch="llama", n_layer=2, n_embd=32, n_hidden=64,
                                   vocab_size=300),
        "mistral": make_llama_folder(root / "mistral", TEXT, arch="mistral", n_layer=2, n_embd=32, n_hidden=64,
                                     vocab_size=300),
        "qwen2": make_llama_folder(root / "qwen2", TEXT, arch="qwen2", n_layer=2, n_embd=32, n_hidden=64,
                                   vocab_size=300),
        "sharded": make_llama_folder(root / "sharded", TEXT, arch="llama", n_layer=2, n_embd=32, n_hidden=64,
                                     vocab_size=300, max_shard_size="10KB"),
    }


@pytest.fixture
def folder(originals, tmp_path):
    """A fresh copy of one of the originals: folder("llama")."""
    def copy(kind="llama"):
        return shutil.copytree(originals[kind], tmp_path / kind)
    return copy


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def edit_weights(folder, change):
    tensors = read_weights(folder)
    change(tensors)
    for f in folder.glob("model*.safetensors*"):
        f.unlink()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


DELETE = object()


def convert_fails(capsys, folder, tmp_path, *says):
    code = cli.main(["convert", "--from_hf", str(folder), "--out", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "Traceback" not in err, err
    for part in says:
        assert part in err, err
    assert not (tmp_path / "ckpt").exists()
    return err


CONFIGS = {
    "llama3 rope scaling": ("llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
                            "rope_scaling type 'llama3' is not supported"),
    "linear scaling, old spelling": ("llama", dict(rope_scaling={"type": "linear", "factor": 2.0}),
                                     "rope_scaling type 'linear' is not supported"),
    "yarn in rope_parameters": ("qwen2", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
                                "rope_parameters type 'yarn' is not supported"),
    "partial rotary": ("llama", dict(partial_rotary_factor=0.5), "partial_rotary_factor 0.5 is not supported"),
    "mistral window": ("mistral", dict(sliding_window=32), "sliding_window 32 is active (smaller than "
                                                           "max_position_embeddings 128)"),
    "mistral's default window": ("mistral", dict(sliding_window=DELETE, max_position_embeddings=32768),
                                 "sliding_window 4096 is active"),
    "qwen2 window": ("qwen2", dict(use_sliding_window=True, sliding_window=16,
                                   layer_types=["full_attention", "sliding_attention"]), "sliding_window 16 is active"),
    "qwen2 window by max_window_layers": ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1,
                                                        layer_types=DELETE), "sliding_window 16 is active"),
    "gelu": ("llama", dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    "head_dim": ("llama", dict(head_dim=16), "head_dim 16 is not supported"),
    "llama attention bias": ("llama", dict(attention_bias=True), "attention_bias true is not supported"),
    "mlp bias": ("llama", dict(mlp_bias=True), "mlp_bias true is not supported"),
    "quantized": ("llama", dict(quantization_config={"quant_method": "bitsandbytes"}), "quantization_config"),
    "a classifier": ("llama", dict(architectures=["LlamaForSequenceClassification"]), "architectures"),
    "another model type": ("llama", dict(model_type="gemma"), "model_type 'gemma' is not one numformer converts"),
    "missing width": ("llama", dict(hidden_size=DELETE), "missing key 'hidden_size'"),
    "heads as text": ("llama", dict(num_attention_heads="4"), "'num_attention_heads' must be a positive integer"),
    "tie as text": ("llama", dict(tie_word_embeddings="false"), "'tie_word_embeddings' must be true or false"),
    "negative eps": ("llama", dict(rms_norm_eps=-1e-6), "'rms_norm_eps' must be a positive finite number"),
    "theta as text": ("llama", dict(rope_theta="1e4", rope_parameters=DELETE), "'rope_theta' must be a positive"),
    "kv heads that do not divide": ("llama", dict(num_key_value_heads=3), "num_key_value_heads: n_head (4) must be "
                                                                          "divisible by n_kv_head (3)"),
    "a billion layers": ("llama", dict(num_hidden_layers=1_000_000_000), "holds the weights of 2 blocks"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_configs_numformer_would_compute_differently_are_refused(case, folder, tmp_path, capsys):
    kind, changes, says = CONFIGS[case]
    f = folder(kind)
    edit_config(f, **changes)
    convert_fails(capsys, f, tmp_path, "config.json", says)


@pytest.mark.parametrize("kind, changes", [
    ("mistral", dict(sliding_window=128)),                                  # as wide as the context
    ("mistral", dict(sliding_window=4096)),
    ("qwen2", dict(use_sliding_window=False, sliding_window=16)),           # off
    ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=2, layer_types=DELETE)),
    ("llama", dict(rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    ("llama", dict(hidden_act="swish", head_dim=8, pretraining_tp=2)),      # the same function
])
def test_configs_that_compute_the_same_are_accepted(kind, changes, folder):
    f = folder(kind)
    edit_config(f, **changes)
    assert load_hf_llama(f).config.n_layer == 2


def test_attention_dropout_is_a_note(folder):
    f = folder("qwen2")
    edit_config(f, attention_dropout=0.1)
    model = load_hf_llama(f)
    assert model.config.dropout == 0 and any("attention_dropout=0.1" in n for n in model.hf_notes)


TENSORS = {
    "missing": (lambda t: t.pop("model.norm.weight"), "missing tensor model.norm.weight"),
    "wrong shape": (lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)}),
                    "tensor model.layers.0.self_attn.k_proj.weight has shape (8, 32), config.json needs (16, 32)"),
    "unexpected": (lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}),
                   "unexpected tensor model.layers.0.mlp.extra.weight"),
    "integers": (lambda t: t.update({"model.norm.weight": np.ones(32, np.int32)}),
                 "tensor model.norm.weight has dtype int32, expected floating point"),
    "nan": (lambda t: t["model.layers.1.mlp.up_proj.weight"].__setitem__((0, 0), np.nan),
            "tensor model.layers.1.mlp.up_proj.weight contains NaN or inf"),
    "no lm_head, untied": (lambda t: t.pop("lm_head.weight"), "missing tensor lm_head.weight"),
}


@pytest.mark.parametrize("case", TENSORS)
def test_bad_tensors_name_the_tensor(case, folder, tmp_path, capsys):
    f = folder("llama")
    change, says = TENSORS[case]
    edit_weights(f, change)
    convert_fails(capsys, f, tmp_path, "model.safetensors", says)


def test_a_head_that_differs_from_a_tied_embedding_is_refused(folder, tmp_path, capsys):
    f = folder("llama")
    edit_config(f, tie_word_embeddings=True)          # the file keeps its own lm_head
    convert_fails(capsys, f, tmp_path, "lm_head.weight differs from model.embed_tokens.weight")


def test_a_tied_head_stored_anyway_and_old_rotary_buffers_are_accepted(folder):
    f = folder("llama")

    def tie(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)

    edit_weights(f, tie)
    edit_config(f, tie_word_embeddings=True)
    model = load_hf_llama(f)
    assert model.config.tie_embeddings and "lm_head.weight" not in model.params.views


def test_pickles_are_refused_unopened(folder, tmp_path, capsys):
    f = folder("llama")
    (f / "model.safetensors").unlink()
    (f / "pytorch_model.bin").write_bytes(b"\x80\x04 not to be opened")
    convert_fails(capsys, f, tmp_path, "pytorch_model.bin", "pickle")


def test_a_missing_shard_is_named(folder, tmp_path, capsys):
    f = folder("sharded")
    shard = sorted(f.glob("model-*.safetensors"))[1]
    shard.unlink()
    convert_fails(capsys, f, tmp_path, shard.name, "missing (listed in model.safetensors.index.json)")


def test_init_from_a_refused_folder_is_one_line(folder, tmp_path, capsys):
    f = folder("mistral")
    edit_config(f, sliding_window=32)
    code = cli.main(["train", "--init_from", str(f), "--out_dir", str(tmp_path / "out"), "--max_iters", "1"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "sliding_window 32 is active" in err, err
