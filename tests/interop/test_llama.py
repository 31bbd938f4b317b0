"""Llama, Mistral and Qwen2 checkpoints in and out of Hugging Face format, with transformers as the
oracle: random folders that transformers writes (grouped-query attention, bfloat16 and float16
weights, sharded files, tied and untied heads, both tokenizer kinds) must give numformer the logits
transformers computes; numformer's Llamas, exported, must give transformers numformer's logits; and
a folder imported and exported again must hold the same tensors."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from numformer import cli
from numformer.checkpoint import read_safetensors
from numformer.data.tokenizer import BPETokenizer, CharTokenizer
from numformer.interop.hf_folder import read_weights
from numformer.interop.llama import export_hf_llama, import_hf_llama, load_hf_llama
from numformer.model import build, load
from numformer.model.adapters import LoRAConfig
from numformer.model.config import LlamaConfig
from numformer.model.llama import Llama
from numformer.reference.llama_folder import make_llama_folder
from numformer.reference.llama_tokenizers import byte_level_bpe
from tests.helpers import TEXT

# name -> make_llama_folder arguments. Every one has a sequence shorter than its context.
FOLDERS = {
    "llama gqa": dict(arch="llama", n_head=4, n_kv_head=2, tokenizer="llama3", rope_theta=500_000.0),
    "llama mqa, tied, bf16, sharded": dict(arch="llama", n_head=4, n_kv_head=1, tie=True, dtype="bfloat16",
                                           max_shard_size="20KB", tokenizer="llama2"),
    "llama mha": dict(arch="llama", n_head=4, n_kv_head=4, tokenizer="tinyllama"),
    "mistral f16": dict(arch="mistral", n_head=4, n_kv_head=2, dtype="float16", tokenizer="tinyllama"),
    "mistral window = context": dict(arch="mistral", n_kv_head=2, block_size=64, sliding_window=64),
    "qwen2 tied, bf16, sharded": dict(arch="qwen2", n_head=4, n_kv_head=2, tie=True, dtype="bfloat16",
                                      max_shard_size="20KB", rope_theta=1_000_000.0, vocab_multiple=64),
    "qwen2 untied": dict(arch="qwen2", n_head=8, n_kv_head=2, n_embd=64, n_layer=3),
}
TORCH = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-folders")
    return {name: make_llama_folder(root / name.replace(" ", "_").replace(",", ""), TEXT, init_std=0.1, **kw)
            for name, kw in FOLDERS.items()}


def transformers_model(folder, dtype=np.float32):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=TORCH[dtype]).eval()


def logits_of(hf, idx):
    with torch.no_grad():
        return hf(torch.tensor(idx)).logits.numpy()


def relative(ours, theirs):
    """max |ours − theirs| / max |theirs|"""
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def random_ids(model, T=40, B=2, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, size=(B, T))


# ----------------------------------------------------------------------------- import


# transformers cannot run these models wholly in float64: its RMSNorm, its attention softmax and its
# RoPE cos and sin compute in float32 whatever the model's dtype, so its float64 logits are float32's
# to ~1e-7. (numformer's float64 Llama against a plain float64 PyTorch Llama: tests/model/test_llama.py;
# the imported weights against transformers', bit for bit: test_weights_arrive_exactly.)
@pytest.mark.parametrize("name", FOLDERS)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-6)])
def test_imported_logits_are_those_of_transformers(folders, name, dtype, tol):
    ours = load_hf_llama(folders[name], dtype=dtype).eval()
    hf = transformers_model(folders[name], dtype)
    idx = random_ids(ours, T=min(40, ours.config.block_size))
    theirs = logits_of(hf, idx)
    assert ours.forward(idx).dtype == dtype
    assert relative(ours.forward(idx), theirs) <= tol
    assert ours.hf_notes == []                                        # nothing was changed or left out


@pytest.mark.parametrize("name", ["llama gqa", "mistral f16", "qwen2 tied, bf16, sharded"])
def test_imported_loss_and_greedy_tokens_are_those_of_transformers(folders, name):
    ours = load_hf_llama(folders[name]).eval()
    hf = transformers_model(folders[name])
    idx = random_ids(ours, T=24, B=1)
    _, loss = ours.forward(idx[:, :-1], idx[:, 1:])
    with torch.no_grad():                       # transformers shifts the labels: position t predicts t+1
        theirs = hf(torch.tensor(idx), labels=torch.tensor(idx)).loss.item()
    assert abs(loss - theirs) <= 1e-5 * theirs
    with torch.no_grad():
        greedy = hf.generate(torch.tensor(idx[:, :8]), max_new_tokens=12, do_sample=False,
                             pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours.generate(idx[:, :8], 12, temperature=0), greedy)


@pytest.mark.parametrize("name", FOLDERS)
def test_weights_arrive_exactly(folders, name):
    """bfloat16 and float16 widen to float32 exactly, as torch widens them."""
    ours = load_hf_llama(folders[name])
    hf = AutoModelForCausalLM.from_pretrained(folders[name], dtype=torch.float32)
    theirs = {k: v.numpy() for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        assert "lm_head.weight" not in ours.params.views
        theirs.pop("lm_head.weight")
    assert set(ours.params.views) == set(theirs)
    for name_, w in ours.params.items():
        np.testing.assert_array_equal(w, theirs[name_])


def test_convert_writes_a_checkpoint_that_the_one_loader_reads(folders, tmp_path, capsys):
    folder = folders["llama mqa, tied, bf16, sharded"]
    assert cli.main(["convert", "--from_hf", str(folder), "--out", str(tmp_path / "ckpt")]) == 0
    assert "from Hugging Face Llama" in capsys.readouterr().out
    model = load(tmp_path / "ckpt").eval()
    assert isinstance(model, Llama) and model.config.tie_embeddings and model.config.n_kv_head == 1
    hf = transformers_model(folder)
    idx = random_ids(model)
    assert relative(model.forward(idx), logits_of(hf, idx)) <= 1e-5
    tok = AutoTokenizer.from_pretrained(folder)
    text = "First Citizen:\n Speak, speak! 你好 🙂"
    assert model.tokenizer.special_prefix.tolist() + model.tokenizer.encode(text).tolist() == tok(text)["input_ids"]


def test_convert_with_dtype_float64(folders, tmp_path):
    import_hf_llama(folders["qwen2 untied"], tmp_path / "ckpt", dtype="float64")
    model = load(tmp_path / "ckpt")
    assert model.dtype == np.float64 and model.config.attention_bias


# ----------------------------------------------------------------------------- export


def random_llama(seed=0, lora=None, **kw):
    """A numformer Llama whose every weight is random (RMSNorm gains and biases included), with a
    byte-level BPE tokenizer: Llama 3's, or Qwen2's for a model with q/k/v biases (which exports as
    a Qwen2)."""
    if kw.get("attention_bias"):
        tok = BPETokenizer.from_hf_document(json.loads(byte_level_bpe(TEXT, 300, "qwen2").to_str()),
                                            {"eos_token": "<|endoftext|>"})
    else:
        tok = BPETokenizer.from_hf_document(json.loads(byte_level_bpe(TEXT, 300).to_str()),
                                            {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    config = LlamaConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32, n_hidden=80, **kw)
    model = build(config, seed=seed, lora=lora)
    rng = np.random.default_rng(seed)
    model.params.flat[...] = rng.normal(0, 0.1, model.params.size)
    for name, w in model.params.items():
        if name.endswith("norm.weight"):
            w[...] = 1 + rng.normal(0, 0.1, w.shape)
    if lora is not None:
        model.adapters.flat[...] = rng.normal(0, 0.1, model.adapters.size)
    model.tokenizer = tok
    return model


EXPORTS = {
    "untied gqa": dict(n_kv_head=2),
    "tied mqa": dict(n_kv_head=1, tie_embeddings=True),
    "q/k/v biases (a Qwen2)": dict(n_kv_head=2, attention_bias=True, rope_theta=1_000_000.0),
    "rope theta 500000": dict(n_kv_head=4, rope_theta=500_000.0, rms_norm_eps=1e-6),
}


@pytest.mark.parametrize("name", EXPORTS)
def test_export_loads_in_transformers_with_the_same_logits(name, tmp_path, capsys):
    model = random_llama(**EXPORTS[name]).eval()
    model.save(tmp_path / "ckpt", tokenizer=model.tokenizer.to_json())
    assert cli.main(["convert", "--to_hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    assert "AutoModelForCausalLM" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == ("qwen2" if model.config.attention_bias else "llama")
    hf = transformers_model(tmp_path / "hf")
    assert type(hf).__name__ == config["architectures"][0]
    idx = random_ids(model)
    assert relative(model.forward(idx), logits_of(hf, idx)) <= 1e-5
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Before we proceed any further, hear me speak.\n  我爱 🙂"
    assert model.tokenizer.special_prefix.tolist() + model.tokenizer.encode(text).tolist() == tok(text)["input_ids"]
    assert tok.eos_token == model.tokenizer.special_tokens["eos_token"] and hf.config.eos_token_id == tok.eos_token_id


def test_export_merges_the_adapters(tmp_path, capsys):
    model = random_llama(lora=LoRAConfig(4, 8.0, ("q_proj", "v_proj", "o_proj", "down_proj"))).eval()
    model.save(tmp_path / "ckpt", tokenizer=model.tokenizer.to_json())
    notes = export_hf_llama(tmp_path / "ckpt", tmp_path / "hf")
    assert any("adapters" in n and "merged" in n for n in notes)
    hf = transformers_model(tmp_path / "hf")
    idx = random_ids(model)
    assert relative(model.forward(idx), logits_of(hf, idx)) <= 1e-5
    assert not any("lora" in k for k in read_safetensors(tmp_path / "hf" / "model.safetensors"))


@pytest.mark.parametrize("name", FOLDERS)
def test_import_then_export_gives_back_the_same_tensors(folders, name, tmp_path):
    import_hf_llama(folders[name], tmp_path / "ckpt")
    export_hf_llama(tmp_path / "ckpt", tmp_path / "hf")
    original = {k: v for k, v in read_weights(folders[name]).items()}
    exported = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert set(exported) == set(original)
    for k, v in original.items():
        np.testing.assert_array_equal(exported[k], v.astype(np.float32))
    back = json.loads((tmp_path / "hf" / "config.json").read_text())
    first = json.loads((folders[name] / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                "bos_token_id", "eos_token_id"):
        assert back[key] == first[key], key
    assert back["rope_parameters"]["rope_theta"] == first["rope_parameters"]["rope_theta"]
    expected_type = "qwen2" if first["model_type"] == "qwen2" else "llama"     # a Mistral comes back a Llama
    assert back["model_type"] == expected_type


# ----------------------------------------------------------------------------- sample and eval


@pytest.mark.parametrize("name", ["llama mqa, tied, bf16, sharded", "mistral f16", "llama gqa", "qwen2 untied"])
def test_greedy_sample_prints_what_transformers_generates(folders, name, tmp_path, capsys):
    """`sample` encodes the prompt as transformers' tokenizer does (a Llama's BOS first) and its
    streamed text is transformers' decoding of the whole sequence: no space lost between pieces
    (a "▁" tokenizer's decoder drops the one before the first token it decodes)."""
    import_hf_llama(folders[name], tmp_path / "ckpt")
    prompt = "First Citizen:\nBefore we"
    assert cli.main(["sample", str(tmp_path / "ckpt"), "--prompt", prompt, "--max_new_tokens", "15",
                     "--temperature", "0"]) == 0
    printed = capsys.readouterr().out
    tok, hf = AutoTokenizer.from_pretrained(folders[name]), transformers_model(folders[name])
    with torch.no_grad():
        out = hf.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=15, do_sample=False,
                          pad_token_id=tok.eos_token_id)
    assert printed == tok.decode(out[0], skip_special_tokens=True) + "\n"        # the prompt, then the rest


@pytest.mark.parametrize("name", ["llama mqa, tied, bf16, sharded", "llama gqa", "qwen2 untied"])
def test_eval_scores_a_text_as_transformers_scores_it(folders, name, tmp_path, capsys):
    """With a BOS (Llama 2's and 3's tokenizers) every token of the text is predicted, as
    transformers' loss of tokenizer(text) has it; without (Qwen2's) all but the first."""
    import_hf_llama(folders[name], tmp_path / "ckpt")
    text = "First Citizen:\nYou are all resolved rather to die than to famish?\n"
    (tmp_path / "text.txt").write_text(text)
    assert cli.main(["eval", str(tmp_path / "ckpt"), "--data", str(tmp_path / "text.txt"), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    tok, hf = AutoTokenizer.from_pretrained(folders[name]), transformers_model(folders[name])
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.shape[1] < 64                                            # one window
    with torch.no_grad():
        theirs = hf(ids, labels=ids).loss.item()
    assert abs(ours["loss"] - theirs) <= 1e-5 * theirs
    assert ours["tokens"] == ids.shape[1] - (1 if tok.bos_token_id is not None and ids[0, 0] == tok.bos_token_id else 0)


def test_a_character_level_llama_survives_the_round_trip(tmp_path):
    """Hugging Face has no character tokenizer: export writes numformer's beside the files
    (transformers ignores it), and import reads it back, so the model can still be sampled."""
    tok = CharTokenizer.from_text(TEXT)
    model = build(LlamaConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16), seed=3)
    model.save(tmp_path / "ckpt", tokenizer=tok.to_json())
    notes = export_hf_llama(tmp_path / "ckpt", tmp_path / "hf")
    assert any("numformer_tokenizer.json" in n for n in notes)
    hf = transformers_model(tmp_path / "hf")
    idx = random_ids(model, T=32)
    assert relative(model.forward(idx), logits_of(hf, idx)) <= 1e-5
    back = load_hf_llama(tmp_path / "hf")
    assert back.tokenizer == tok and back.hf_notes == []
