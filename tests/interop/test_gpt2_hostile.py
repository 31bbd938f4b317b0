"""GPT-2 folders that used to end in a traceback, and a character-level model's round trip
through Hugging Face format (its tokenizer used to be lost on the way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from numformer.checkpoint import load_checkpoint
from numformer.cli import main as cli_main
from numformer.data.tokenizer import CharTokenizer
from numformer.errors import CheckpointError
from numformer.model.gpt import GPT

from .test_gpt2 import edit_config, make_hf, save_hf, train_checkpoint


@pytest.fixture
def hf_folder(tmp_path):
    return save_hf(make_hf(seed=8, vocab=40, n_layer=2, n_head=2, n_embd=12), tmp_path / "hf")


def _one_line_error(folder, *words):
    with pytest.raises(CheckpointError) as e:
        GPT.from_hf(folder)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("eps", ["Infinity", "1e400", "-Infinity", "NaN"])
def test_layer_norm_epsilon_that_is_not_finite(hf_folder, eps):
    file = hf_folder / "config.json"
    text = file.read_text()
    cfg = json.loads(text)
    file.write_text(text.replace(f'"layer_norm_epsilon": {cfg["layer_norm_epsilon"]}', f'"layer_norm_epsilon": {eps}'))
    assert eps in file.read_text()
    _one_line_error(hf_folder, "layer_norm_epsilon")


@pytest.mark.parametrize("key", ["tie_word_embeddings", "scale_attn_weights", "add_cross_attention"])
@pytest.mark.parametrize("value", ["false", "true", 1])
def test_boolean_keys_written_as_text_are_refused(hf_folder, key, value):
    edit_config(hf_folder, **{key: value})
    _one_line_error(hf_folder, key, "true or false")


def _shard(tmp_path):
    hf = make_hf(seed=4, vocab=40, n_layer=2, n_head=2, n_embd=12)
    folder = tmp_path / "sharded"
    hf.save_pretrained(folder, safe_serialization=True, max_shard_size="6KB")
    return folder


@pytest.mark.parametrize("spoil", ["lists", "mixed"])
def test_shard_index_whose_values_are_not_file_names(tmp_path, spoil):
    folder = _shard(tmp_path)
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    names = list(index["weight_map"])
    if spoil == "lists":
        index["weight_map"] = {k: [v] for k, v in index["weight_map"].items()}
    else:
        index["weight_map"][names[0]] = 7
    index_file.write_text(json.dumps(index))
    _one_line_error(folder, "model.safetensors.index.json", "bad shard file name")


def test_a_character_level_model_survives_export_and_import_and_samples(tmp_path, capsys):
    tok = CharTokenizer.from_text("hello world, the quick brown fox\n")
    ckpt = tmp_path / "ckpt"
    train_checkpoint(ckpt, steps=2, vocab_size=tok.vocab_size)
    # give the checkpoint its char tokenizer (train_checkpoint saves BPE ones only)
    GPT.load(ckpt).save(tmp_path / "ckpt2", tokenizer=tok.to_json())
    assert cli_main(["convert", "--to_hf", str(tmp_path / "ckpt2"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "numformer_tokenizer.json").is_file()
    assert cli_main(["convert", "--from_hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back = load_checkpoint(tmp_path / "back")
    assert json.loads(back.tokenizer) == json.loads(tok.to_json())
    r = subprocess.run([sys.executable, "-m", "numformer", "sample", "--out_dir", str(tmp_path / "back"),
                        "--prompt", "hello", "--max_new_tokens", "5", "--temperature", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = GPT.load(tmp_path / "ckpt2").generate(tok.encode("hello")[None, :], 5, temperature=0)
    assert r.stdout == tok.decode(want[0]) + "\n"       # the original model's greedy text


def test_the_exported_folder_still_loads_in_transformers(tmp_path):
    from transformers import GPT2LMHeadModel

    tok = CharTokenizer.from_text("abcdefg \n")
    train_checkpoint(tmp_path / "ckpt", steps=1, vocab_size=tok.vocab_size)
    GPT.load(tmp_path / "ckpt").save(tmp_path / "ckpt2", tokenizer=tok.to_json())
    assert cli_main(["convert", "--to_hf", str(tmp_path / "ckpt2"), "--out", str(tmp_path / "hf")]) == 0
    GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    # an export with the extra file is still recognised as numformer's (so --overwrite may replace it)
    assert cli_main(["convert", "--to_hf", str(tmp_path / "ckpt2"), "--out", str(tmp_path / "hf"), "--overwrite"]) == 0


def _convert_error(capsys, folder, out):
    capsys.readouterr()
    code = cli_main(["convert", "--from_hf", str(folder), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "Traceback" not in err, (code, err)
    assert not out.exists()
    return err


def _sparse(file, size):
    """A regular file of `size` bytes that takes no disk space (all holes)."""
    with open(file, "ab") as f:
        f.truncate(size)


@pytest.mark.parametrize("make, words", [
    (os.mkfifo, ["config.json: cannot be read: it is a FIFO"]),                                # used to hang
    (lambda f: os.symlink("/dev/zero", f), ["config.json: cannot be read: it is a character device"]),
    (lambda f: f.write_text('{"model_type": "gpt2", "n_layer": ' + "1" * 4400 + "}"), ["config.json: invalid JSON",
                                                                                       "4,300 digits"]),
    (lambda f: _sparse(f, 200 << 20), ["config.json: 209,715,200 bytes", "not read"]),
], ids=["fifo", "dev-zero", "huge-int", "200MB"])
def test_a_config_json_that_is_not_a_small_regular_file_is_refused_unread(hf_folder, tmp_path, capsys, deadline,
                                                                           make, words):
    file = hf_folder / "config.json"
    file.unlink()
    make(file)
    deadline(30)
    err = _convert_error(capsys, hf_folder, tmp_path / "out")
    assert all(w in err for w in words), err
    assert str(file) in err, err


@pytest.mark.parametrize("make, word", [(os.mkfifo, "FIFO"), (lambda f: os.symlink("/dev/zero", f), "character device"),
                                        (lambda f: _sparse(f, 600 << 20), "629,145,600 bytes")],
                         ids=["fifo", "dev-zero", "600MB"])
def test_a_tokenizer_json_that_is_not_a_sane_regular_file_is_left_out_unread(hf_folder, deadline, make, word):
    file = hf_folder / "tokenizer.json"
    make(file)
    deadline(30)
    model = GPT.from_hf(hf_folder)
    assert model.tokenizer is None
    (note,) = [n for n in model.hf_notes if "tokenizer" in n]
    assert str(file) in note and word in note and "\n" not in note, note
