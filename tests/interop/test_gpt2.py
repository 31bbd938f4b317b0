"""GPT-2 in and out of Hugging Face format, checked against transformers' GPT2LMHeadModel.

The oracle is transformers itself: randomly initialised GPT2LMHeadModels saved with
save_pretrained(safe_serialization=True) are imported, and numformer checkpoints are exported and
loaded with GPT2LMHeadModel.from_pretrained. Logits are compared in float32 with

    max |logits_numformer - logits_hf|  <=  1e-5 · max(1, max |logits_hf|)

(an absolute bound of 1e-5 for logits of order one, relative to the logits' scale beyond), and the
first 20 greedy tokens of numformer's generate(temperature=0) must equal transformers'
generate(do_sample=False). Weights are drawn with std 0.2 (not GPT-2's 0.02) and biases and
LayerNorm parameters are randomised too, so that every tensor matters and greedy decoding is not
decided by near-ties. Bad input is built in tmp_path from altered copies of saved files.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from numformer.checkpoint import load_checkpoint
from numformer.cli import main as cli_main
from numformer.data.tokenizer import BPETokenizer
from numformer.errors import CheckpointError
from numformer.model.config import GPTConfig
from numformer.model.gpt import GPT
from numformer.optim import AdamW

TOL = 1e-5
N_GREEDY = 20


def close_enough(ours, ref) -> float:
    """Assert the module docstring's bound; return the max abs difference (for the report)."""
    diff = float(np.abs(ours - ref).max())
    bound = TOL * max(1.0, float(np.abs(ref).max()))
    assert diff <= bound, f"max |Δlogits| = {diff:.3g} > {bound:.3g}"
    return diff


def make_hf(seed=0, *, vocab=50, n_positions=32, n_layer=2, n_head=2, n_embd=16, act="gelu_new",
            eps=1e-5, biases="random") -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd, activation_function=act, layer_norm_epsilon=eps,
                     initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1) if biases == "random" else p.zero_()
            elif ".ln_" in name:
                p.normal_(1.0, 0.1)  # LayerNorm gains
    return model


def hf_logits(model, idx) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(idx)).logits.numpy()


def hf_greedy(model, prompt) -> np.ndarray:
    p = torch.tensor(prompt)
    with torch.no_grad():
        out = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=N_GREEDY,
                             do_sample=False, pad_token_id=0)
    return out.numpy()


def assert_same_model(ours: GPT, hf, vocab, block) -> float:
    rng = np.random.default_rng(1)
    idx = rng.integers(0, vocab, size=(3, block))             # every position of the table
    diff = close_enough(ours.eval().forward(idx), hf_logits(hf, idx))
    prompt = rng.integers(0, vocab, size=(2, 5))
    greedy = ours.generate(prompt, N_GREEDY, temperature=0)
    np.testing.assert_array_equal(greedy, hf_greedy(hf, prompt))
    return diff


def save_hf(model, folder):
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# ============================================================================================ import

SHAPES = {
    # name: (make_hf kwargs)
    "one_head_one_layer_zero_bias": dict(vocab=50, n_layer=1, n_head=1, n_embd=8, biases="zero"),
    "odd_widths_random_bias": dict(vocab=61, n_layer=2, n_head=3, n_embd=21),
    "exact_gelu_eps_1e-6": dict(vocab=97, n_layer=3, n_head=5, n_embd=40, act="gelu", eps=1e-6),
    "pytorch_tanh_zero_bias": dict(vocab=33, n_layer=2, n_head=2, n_embd=18, act="gelu_pytorch_tanh",
                                   biases="zero"),
}


@pytest.mark.parametrize("case", SHAPES)
def test_import_matches_transformers(case, tmp_path):
    kw = SHAPES[case]
    hf = make_hf(seed=len(case), **kw)
    folder = save_hf(hf, tmp_path / "hf")
    model = GPT.from_hf(folder)
    assert model.dtype == np.float32
    cfg = model.config
    assert (cfg.pos_encoding, cfg.bias, cfg.dropout) == ("learned", True, 0.0)
    assert cfg.gelu == ("exact" if kw.get("act") == "gelu" else "tanh")
    assert cfg.layer_norm_eps == kw.get("eps", 1e-5)
    assert any("dropout 0" in note for note in model.hf_notes)   # GPT-2's pdrop 0.1 was dropped
    assert_same_model(model, hf, kw["vocab"], 32)


def rewrite(folder, change):
    """Apply change(dict of tensors) -> dict to folder/model.safetensors, keeping HF's metadata."""
    file = folder / "model.safetensors"
    save_file(change(load_file(file)), file, metadata={"format": "pt"})


VARIANTS = {
    "no_transformer_prefix": lambda t: {k.removeprefix("transformer."): v for k, v in t.items()},
    "explicit_tied_lm_head": lambda t: {**t, "lm_head.weight": t["transformer.wte.weight"].copy()},
    "legacy_attention_buffers": lambda t: {
        **t,
        **{f"transformer.h.{i}.attn.bias": np.tril(np.ones((1, 1, 32, 32), dtype=np.uint8)) for i in range(2)},
        **{f"transformer.h.{i}.attn.masked_bias": np.array(-1e4, dtype=np.float32) for i in range(2)},
    },
    "float16_file": lambda t: {k: v.astype(np.float16) for k, v in t.items()},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_import_file_variants(variant, tmp_path):
    hf = make_hf(seed=3, vocab=40, n_layer=2, n_head=2, n_embd=12)
    folder = save_hf(hf, tmp_path / "hf")
    rewrite(folder, VARIANTS[variant])
    if variant == "float16_file":  # the oracle then runs on the same rounded weights
        hf = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    model = GPT.from_hf(folder)
    assert model.params.flat.dtype == np.float32
    assert_same_model(model, hf, 40, 32)


def test_import_sharded_checkpoint(tmp_path):
    hf = make_hf(seed=4, vocab=40, n_layer=2, n_head=2, n_embd=12)
    folder = tmp_path / "hf"
    hf.save_pretrained(folder, safe_serialization=True, max_shard_size="6KB")
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    assert_same_model(GPT.from_hf(folder), hf, 40, 32)


def test_convert_command_writes_a_checkpoint_that_gpt_load_reads(tmp_path, capsys):
    hf = make_hf(seed=5, vocab=45, n_layer=2, n_head=3, n_embd=15)
    folder = save_hf(hf, tmp_path / "hf")
    assert cli_main(["convert", "--from-hf", str(folder), "--out", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "note:" in out and "dropout 0" in out and "no tokenizer" in out
    model = GPT.load(tmp_path / "ckpt")
    assert model.tokenizer is None
    assert_same_model(model, hf, 45, 32)
    # the same numbers as the Python API, bit for bit
    np.testing.assert_array_equal(model.params.flat, GPT.from_hf(folder).params.flat)


def write_bpe_tokenizer_json(file, text, vocab_size):
    """A GPT-2-style byte-level BPE tokenizer.json made with `tokenizers` directly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    tok.save(str(file))
    return tok


TEXT = "the quick brown fox jumps over the lazy dog. " * 20 + "To be, or not to be: that is the question."


def test_import_carries_a_tokenizer_json(tmp_path):
    hf = make_hf(seed=6, vocab=300, n_layer=1, n_head=2, n_embd=8)
    folder = save_hf(hf, tmp_path / "hf")
    ref = write_bpe_tokenizer_json(folder / "tokenizer.json", TEXT, 290)
    assert cli_main(["convert", "--from-hf", str(folder), "--out", str(tmp_path / "ckpt")]) == 0
    model = GPT.load(tmp_path / "ckpt")
    assert isinstance(model.tokenizer, BPETokenizer)
    for text in ["the lazy fox", "naïve café, 我爱 <|endoftext|>", ""]:
        ids = model.tokenizer.encode(text)
        np.testing.assert_array_equal(ids, ref.encode(text, add_special_tokens=False).ids)
        assert model.tokenizer.decode(ids) == ref.decode(ids.tolist(), skip_special_tokens=False)


def test_import_leaves_out_a_tokenizer_larger_than_the_model(tmp_path):
    hf = make_hf(seed=7, vocab=260, n_layer=1, n_head=1, n_embd=8)
    folder = save_hf(hf, tmp_path / "hf")
    write_bpe_tokenizer_json(folder / "tokenizer.json", TEXT, 290)
    model = GPT.from_hf(folder)
    assert model.tokenizer is None
    assert any("tokenizer.json has" in n and "stores no tokenizer" in n for n in model.hf_notes)


# ============================================================================================ export


def train_checkpoint(path, *, steps=4, tokenizer=None, **overrides):
    """A small numformer GPT trained a few AdamW steps on random tokens, saved at path."""
    cfg = GPTConfig(**{"vocab_size": 300 if tokenizer else 37, "block_size": 24, "n_layer": 2, "n_head": 2,
                       "n_embd": 16, "pos_encoding": "learned", "dropout": 0.0, **overrides})
    model = GPT(cfg, seed=11)
    opt = AdamW(model.params.flat, lr=3e-2, weight_decay=0.1, decay_mask=model.decay_mask())
    rng = np.random.default_rng(12)
    for _ in range(steps):
        idx = rng.integers(0, cfg.vocab_size, size=(4, cfg.block_size))
        model.zero_grad()
        model.forward(idx, np.roll(idx, -1, axis=1))
        model.backward()
        opt.step(model.grads.flat)
    assert not np.all(model.params["transformer.ln_f.weight"] == 1)  # it did train
    model.save(path, tokenizer=tokenizer.to_json() if tokenizer else None)
    return GPT.load(path)


EXPORTS = {
    "learned_bias": dict(),
    "learned_no_bias_exact_gelu": dict(bias=False, gelu="exact", layer_norm_eps=1e-6),
    "sinusoidal": dict(pos_encoding="sinusoidal", n_head=4, n_embd=20),
    "sinusoidal_no_bias": dict(pos_encoding="sinusoidal", bias=False, n_layer=1, n_head=1),
}


@pytest.mark.parametrize("case", EXPORTS)
def test_export_loads_in_transformers_with_the_same_logits(case, tmp_path, capsys):
    ours = train_checkpoint(tmp_path / "ckpt", **EXPORTS[case])
    assert cli_main(["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert ("sinusoidal positions exported" in out) == case.startswith("sinusoidal")
    assert ("exported as zeros" in out) == ("no_bias" in case)
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    assert not [n for n in os.listdir(tmp_path) if "numformer-" in n]   # no temp folders left

    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()   # tied, as GPT-2
    keys = set(load_file(tmp_path / "hf" / "model.safetensors"))
    assert "lm_head.weight" not in keys and all(k.startswith("transformer.") for k in keys)
    assert_same_model(ours, hf, ours.config.vocab_size, ours.config.block_size)


def test_export_then_import_gives_back_the_checkpoint_bit_for_bit(tmp_path):
    tok = BPETokenizer.train(TEXT, 300)
    train_checkpoint(tmp_path / "ckpt", tokenizer=tok)
    assert cli_main(["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    assert cli_main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    a, b = load_checkpoint(tmp_path / "ckpt"), load_checkpoint(tmp_path / "back")
    assert list(a.model) == list(b.model)
    for name in a.model:
        assert a.model[name].dtype == b.model[name].dtype == np.float32
        assert np.array_equal(a.model[name], b.model[name]), name
    assert a.config["model"] == b.config["model"]
    assert a.tokenizer == b.tokenizer


def test_export_writes_a_tokenizer_json_that_transformers_reads(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = BPETokenizer.train(TEXT, 300)
    train_checkpoint(tmp_path / "ckpt", tokenizer=tok, steps=1)
    assert cli_main(["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 0
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / "tokenizer.json"))
    for text in ["the lazy dog", "héllo, world\n  twice"]:
        assert hf_tok(text)["input_ids"] == tok.encode(text).tolist()


def test_export_replaces_an_earlier_export_only_with_overwrite(tmp_path, capsys):
    train_checkpoint(tmp_path / "ckpt", steps=1)
    out = tmp_path / "hf"
    argv = ["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(out)]
    assert cli_main(argv) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    (out / "model.safetensors").touch()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert cli_main(argv) == 1                     # not without being asked
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "\n" not in err, err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert cli_main([*argv, "--overwrite"]) == 0   # an earlier export is replaced
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert not [n for n in os.listdir(tmp_path) if "numformer-" in n]


def training_checkpoint(path):
    """A checkpoint as `numformer train` leaves it: weights, optimizer moments, training state."""
    model = train_checkpoint(path, steps=1)
    n = model.params.flat.size
    model.save(path, optimizer={"m": np.full(n, 0.5, np.float32), "v": np.full(n, 0.25, np.float32)},
               train_state={"iter_num": 1, "batch_rng": {"state": 7}})
    return {name: (path / name).read_bytes() for name in os.listdir(path)}


def test_import_does_not_replace_a_training_checkpoint_without_overwrite(hf_folder, tmp_path, capsys):
    latest = tmp_path / "out" / "latest"
    before = training_checkpoint(latest)
    assert "optimizer.safetensors" in before
    argv = ["convert", "--from-hf", str(hf_folder), "--out", str(latest)]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("numformer convert: error:") and "\n" not in err, err
    assert "--overwrite" in err and "optimizer" in err, err
    assert {name: (latest / name).read_bytes() for name in os.listdir(latest)} == before
    assert load_checkpoint(latest).config["train"]["iter_num"] == 1      # --resume still has its state
    assert sorted(os.listdir(tmp_path / "out")) == ["latest"]

    assert cli_main([*argv, "--overwrite"]) == 0                          # asked for: replaced
    assert load_checkpoint(latest).optimizer is None
    assert_same_model(GPT.load(latest), GPT2LMHeadModel.from_pretrained(hf_folder).eval(), 40, 32)


def test_overwrite_never_replaces_what_numformer_did_not_write(hf_folder, tmp_path, capsys):
    train_checkpoint(tmp_path / "ckpt", steps=1)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    afile = tmp_path / "corpus.txt"
    afile.write_text("my corpus")
    for target in (notes, afile):
        for argv in (["--from-hf", str(hf_folder)], ["--to-hf", str(tmp_path / "ckpt")]):
            assert cli_main(["convert", *argv, "--out", str(target), "--overwrite"]) == 1
            assert "refusing" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "keep me" and os.listdir(notes) == ["todo.txt"]
    assert afile.read_text() == "my corpus"


def test_convert_refuses_empty_paths(hf_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_checkpoint(tmp_path / "ckpt", steps=1)
    before = sorted(os.listdir(tmp_path))
    for argv in (["--from-hf", str(hf_folder), "--out", ""], ["--to-hf", str(tmp_path / "ckpt"), "--out", ""],
                 ["--from-hf", "", "--out", "new"], ["--to-hf", "", "--out", "new"]):
        assert cli_main(["convert", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "is empty" in err and "\n" not in err, err
    assert sorted(os.listdir(tmp_path)) == before


def test_convert_refuses_a_folder_that_a_training_run_holds(hf_folder, tmp_path, capsys):
    from numformer.checkpoint import lock_folder

    train_checkpoint(tmp_path / "out" / "latest", steps=1)
    with lock_folder(tmp_path / "out", "numformer train"):
        argv = ["convert", "--from-hf", str(hf_folder), "--out", str(tmp_path / "out" / "latest"), "--overwrite"]
        assert cli_main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "in use by numformer train" in err and f"pid {os.getpid()}" in err and "\n" not in err, err
    assert cli_main(argv) == 0            # released: now it may


# ============================================================================================ bad input


@pytest.fixture
def hf_folder(tmp_path):
    """A valid saved GPT-2 folder (2 layers, n_embd 12) that each bad-input test spoils."""
    return save_hf(make_hf(seed=8, vocab=40, n_layer=2, n_head=2, n_embd=12), tmp_path / "hf")


def edit_config(folder, **changes):
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    for key, value in changes.items():
        if value is ...:
            cfg.pop(key)
        else:
            cfg[key] = value
    file.write_text(json.dumps(cfg))


def expect_error(folder, *words):
    """GPT.from_hf fails with one CheckpointError line containing every word."""
    with pytest.raises(CheckpointError) as e:
        GPT.from_hf(folder)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


BAD_TENSORS = {
    "missing_tensor": (lambda t: {k: v for k, v in t.items() if k != "transformer.h.1.mlp.c_fc.bias"},
                       ["missing tensor", "transformer.h.1.mlp.c_fc.bias"]),
    "linear_layout_instead_of_conv1d": (
        lambda t: {**t, "transformer.h.0.attn.c_attn.weight": t["transformer.h.0.attn.c_attn.weight"].T.copy()},
        ["transformer.h.0.attn.c_attn.weight", "(36, 12)", "(12, 36)", "Conv1D"]),
    "wrong_shape_wpe": (lambda t: {**t, "transformer.wpe.weight": t["transformer.wpe.weight"][:16].copy()},
                        ["transformer.wpe.weight", "(16, 12)", "(32, 12)"]),
    "missing_tensor_no_prefix": (
        lambda t: {k.removeprefix("transformer."): v for k, v in t.items() if "ln_f.weight" not in k},
        ["missing tensor ln_f.weight"]),
    "untied_lm_head": (lambda t: {**t, "lm_head.weight": t["transformer.wte.weight"] + 1},
                       ["lm_head.weight", "differs", "ties"]),
    "unexpected_tensor": (lambda t: {**t, "score.weight": np.zeros((2, 12), np.float32)},
                          ["unexpected tensor score.weight"]),
    "nan_weight": (lambda t: {**t, "transformer.ln_f.bias": np.full(12, np.nan, np.float32)},
                   ["transformer.ln_f.bias", "NaN"]),
    "integer_weight": (lambda t: {**t, "transformer.ln_f.bias": np.zeros(12, np.int32)},
                       ["transformer.ln_f.bias", "int32"]),
}


@pytest.mark.parametrize("case", BAD_TENSORS)
def test_bad_tensors_name_the_tensor(case, hf_folder):
    change, words = BAD_TENSORS[case]
    rewrite(hf_folder, change)
    expect_error(hf_folder, *words)


BAD_CONFIGS = {
    "not_gpt2": (dict(model_type="bert"), ["model_type", "'bert'", "gpt2"]),
    "no_model_type": (dict(model_type=...), ["model_type"]),
    "missing_n_head": (dict(n_head=...), ["missing key 'n_head'"]),
    "bad_n_layer": (dict(n_layer=0), ["'n_layer'", "positive integer"]),
    "heads_do_not_divide": (dict(n_head=5), ["n_embd (12)", "n_head (5)"]),
    "relu": (dict(activation_function="relu"), ["activation_function", "'relu'"]),
    "inverse_layer_idx": (dict(scale_attn_by_inverse_layer_idx=True), ["scale_attn_by_inverse_layer_idx=true"]),
    "reorder_and_upcast": (dict(reorder_and_upcast_attn=True), ["reorder_and_upcast_attn=true"]),
    "no_attn_scaling": (dict(scale_attn_weights=False), ["scale_attn_weights=false"]),
    "cross_attention": (dict(add_cross_attention=True), ["add_cross_attention=true"]),
    "n_inner": (dict(n_inner=24), ["n_inner=24", "4·n_embd = 48"]),
    "untied_config_without_head": (dict(tie_word_embeddings=False), ["tie_word_embeddings", "lm_head.weight"]),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_configs_name_the_key(case, hf_folder):
    changes, words = BAD_CONFIGS[case]
    edit_config(hf_folder, **changes)
    expect_error(hf_folder, *words)


def test_n_inner_of_four_times_n_embd_is_accepted(hf_folder):
    edit_config(hf_folder, n_inner=48)
    assert GPT.from_hf(hf_folder).config.n_embd == 12


def test_folder_without_weights(hf_folder):
    (hf_folder / "model.safetensors").unlink()
    expect_error(hf_folder, "no weights", "model.safetensors")


def test_folder_without_config(hf_folder):
    (hf_folder / "config.json").unlink()
    expect_error(hf_folder, "config.json", "missing")


def test_missing_folder(tmp_path):
    expect_error(tmp_path / "nope", "no such folder")


class _RunsCodeWhenUnpickled:
    """Unpickling this creates a folder: proof that a pickle was (or was not) loaded."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.mkdir, (self.sentinel,))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth"])
def test_pickle_weights_are_refused_unopened(name, hf_folder, tmp_path):
    sentinel = tmp_path / "unpickled"
    (hf_folder / "model.safetensors").unlink()
    (hf_folder / name).write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(str(sentinel))))
    expect_error(hf_folder, name, "pickle", "arbitrary code")
    expect_error(hf_folder / name, name, "pickle", "arbitrary code")   # the file given directly
    assert not sentinel.exists()


def test_a_pickle_named_model_safetensors_is_refused_unopened(hf_folder, tmp_path):
    sentinel = tmp_path / "unpickled"
    (hf_folder / "model.safetensors").write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(str(sentinel))))
    expect_error(hf_folder, "pickle")
    assert not sentinel.exists()


def test_cli_prints_one_line_and_fails(hf_folder, tmp_path, capsys):
    edit_config(hf_folder, model_type="bert")
    out = tmp_path / "ckpt"
    assert cli_main(["convert", "--from-hf", str(hf_folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("numformer convert: error:") and "\n" not in err
    assert "model_type 'bert' is not one numformer converts (gpt2, llama, mistral, qwen2)" in err
    assert not out.exists()


def test_export_refuses_to_write_into_a_foreign_folder(hf_folder, tmp_path, capsys):
    train_checkpoint(tmp_path / "ckpt", steps=1)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    for target in (other, hf_folder):   # unrelated files; a real HF checkpoint (not our export)
        before = {n: (target / n).read_bytes() for n in os.listdir(target)}
        assert cli_main(["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(target)]) == 1
        assert "refusing to write into it" in capsys.readouterr().err
        assert {n: (target / n).read_bytes() for n in os.listdir(target)} == before


def test_export_of_something_that_is_not_a_numformer_checkpoint(hf_folder, tmp_path):
    from numformer.interop.gpt2 import export_hf_gpt2

    with pytest.raises(CheckpointError, match="numformer"):
        export_hf_gpt2(hf_folder, tmp_path / "out")           # a Hugging Face folder
    sentinel = tmp_path / "unpickled"
    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(str(sentinel))))
    with pytest.raises(CheckpointError, match="pickle"):
        export_hf_gpt2(pt, tmp_path / "out")
    assert not sentinel.exists() and not (tmp_path / "out").exists()


def test_dtype_flag_is_for_import_only(tmp_path, capsys):
    train_checkpoint(tmp_path / "ckpt", steps=1)
    argv = ["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"), "--dtype", "float64"]
    assert cli_main(argv) == 2
    assert "--dtype" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
