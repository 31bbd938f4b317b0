"""`numformer train --init_from DIR`, with and without LoRA (numformer.training.finetune).

The GPT-2 folders are random GPT2LMHeadModels with a byte-level BPE trained on the corpus, saved
as GPT-2's own folders are (vocab.json + merges.txt, no tokenizer.json): numformer.reference.gpt2_folder.
"""

import json

import numpy as np
import pytest
import torch

from numformer.checkpoint import load_checkpoint
from numformer.cli import main as cli_main
from numformer.model.gpt import GPT
from numformer.training import run
from tests.helpers import FINETUNE as RUN, finetune as train, make_finetune_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_finetune_lab(tmp_path_factory.mktemp("finetune"))


def error_line(capsys, args):
    capsys.readouterr()
    code = cli_main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.count("\n") == 0, err
    return err


def test_init_from_a_gpt2_folder_starts_from_its_weights_and_learns(lab):
    summary = train(lab, "full", max_iters=30, eval_interval=30, learning_rate=1e-2)
    rows = [json.loads(line) for line in (lab / "full" / "metrics.jsonl").read_text().splitlines()]
    start = GPT.from_hf(lab / "gpt2")
    # the step-0 evaluation is of the imported weights: transformers' loss on the same windows
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(lab / "gpt2").eval()
    ids = start.tokenizer.encode((lab / "corpus.txt").read_text())
    x = torch.tensor(ids[:32 * 8].reshape(8, 32))
    with torch.no_grad():
        hf_loss = hf(x, labels=x).loss.item()
    assert abs(rows[0]["val_loss"] - hf_loss) < 0.1       # a random model: near log V on any windows
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.0, rows
    ckpt = load_checkpoint(lab / "full" / "latest")
    assert ckpt.config["train"]["config"]["init_from"] == str(lab / "gpt2")
    assert ckpt.config["model"]["vocab_size"] == start.config.vocab_size
    assert set(ckpt.optimizer["m"].shape) == {start.num_params()}       # every weight trains
    tuned = GPT.load(lab / "full" / "latest")
    assert tuned.tokenizer == start.tokenizer                            # GPT-2's tokenizer travels along
    assert summary["step"] == 30


def test_resume_continues_a_fine_tuning_run_bit_for_bit(lab):
    train(lab, "straight", max_iters=6)
    train(lab, "halves", max_iters=3)
    run(dict(out_dir=str(lab / "halves"), max_iters=6), resume=True, cache_dir=lab / "cache", plot=False)
    a = load_checkpoint(lab / "straight" / "latest")
    b = load_checkpoint(lab / "halves" / "latest")
    for name in a.model:
        np.testing.assert_array_equal(a.model[name], b.model[name], err_msg=name)


def test_lora_trains_only_the_adapters(lab):
    train(lab, "lora", lora_rank=4, lora_alpha=8.0, max_iters=6)
    start = GPT.from_hf(lab / "gpt2")
    tuned = GPT.load(lab / "lora" / "latest")
    assert tuned.lora.rank == 4 and tuned.lora.alpha == 8.0 and tuned.lora.targets == ("attn.c_attn", "attn.c_proj")
    np.testing.assert_array_equal(tuned.params.flat, start.params.flat)       # the base is frozen
    assert np.abs(tuned.adapters.flat).max() > 0
    B = tuned.adapters["transformer.h.1.attn.c_proj.lora_B"]
    assert np.abs(B).max() > 0                                                   # B left zero, it trained
    ckpt = load_checkpoint(lab / "lora" / "latest")
    assert ckpt.optimizer["m"].shape == (tuned.adapters.size,)                   # moments for the adapters alone
    assert tuned.adapters.size == 2 * 4 * ((32 + 96) + (32 + 32))


def test_lora_resume_is_bit_for_bit(lab):
    train(lab, "lora_straight", lora_rank=2, lora_targets="attn.c_attn,mlp.c_fc", max_iters=6)
    train(lab, "lora_halves", lora_rank=2, lora_targets="attn.c_attn,mlp.c_fc", max_iters=3)
    run(dict(out_dir=str(lab / "lora_halves"), max_iters=6), resume=True, cache_dir=lab / "cache", plot=False)
    a, b = GPT.load(lab / "lora_straight" / "latest"), GPT.load(lab / "lora_halves" / "latest")
    np.testing.assert_array_equal(a.adapters.flat, b.adapters.flat)


def test_init_from_a_numformer_checkpoint_with_adapters_starts_from_the_merged_model(lab):
    train(lab, "lora_src", lora_rank=2, max_iters=3)
    src = GPT.load(lab / "lora_src" / "latest")
    train(lab, "from_lora", init_from=str(lab / "lora_src" / "latest"), max_iters=0, eval_interval=1)
    again = GPT.load(lab / "from_lora" / "latest")
    assert again.lora is None
    x = np.arange(32)[None, :] % src.config.vocab_size
    np.testing.assert_allclose(again.eval().forward(x), src.eval().forward(x), atol=1e-5)


def test_dropout_may_be_set(lab):
    train(lab, "dropout", dropout=0.1, max_iters=2, eval_interval=2)
    assert load_checkpoint(lab / "dropout" / "latest").config["model"]["dropout"] == 0.1


@pytest.mark.parametrize("flag, value", [("n_layer", "3"), ("n_embd", "64"), ("block_size", "16"), ("tokenizer", "char"),
                                         ("pos_encoding", "sinusoidal")])
def test_a_model_flag_that_contradicts_init_from_is_one_line(lab, capsys, flag, value):
    err = error_line(capsys, ["train", "--init_from", str(lab / "gpt2"), "--data", str(lab / "corpus.txt"),
                              "--out_dir", str(lab / f"bad_{flag}"), f"--{flag}", value])
    assert f"--{flag}" in err and "contradicts --init_from" in err
    assert not (lab / f"bad_{flag}" / "latest").exists()


def test_bad_init_from_folders_are_one_line(lab, tmp_path, capsys):
    common = ["--data", str(lab / "corpus.txt"), "--out_dir", str(tmp_path / "out")]
    err = error_line(capsys, ["train", "--init_from", str(tmp_path / "nowhere"), *common])
    assert "no such folder" in err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((lab / "gpt2" / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")     # never opened
    err = error_line(capsys, ["train", "--init_from", str(pickled), *common])
    assert "pickle" in err.lower()
    (pickled / "config.json").unlink()
    err = error_line(capsys, ["train", "--init_from", str(pickled), *common])
    assert "pickle" in err.lower()
    # a config.json that contradicts the weights' shapes
    bad = tmp_path / "bad_shapes"
    bad.mkdir()
    for f in (lab / "gpt2").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_embd"] = 48
    (bad / "config.json").write_text(json.dumps(cfg))
    err = error_line(capsys, ["train", "--init_from", str(bad), *common])
    assert "config" in err and ("shape" in err or "parameters" in err)


def test_char_checkpoint_meeting_a_new_character_names_it(lab, tmp_path, capsys):
    corpus = tmp_path / "abc.txt"
    corpus.write_text("abc cab bca\n" * 400, encoding="utf-8")
    run(dict(RUN, data=str(corpus), out_dir=str(tmp_path / "char"), n_layer=1, n_head=1, n_embd=8, block_size=8,
             max_iters=1, eval_interval=1), cache_dir=tmp_path / "cache", plot=False)
    new = tmp_path / "new.txt"
    new.write_text("abc cab\n" * 300 + "abz\n", encoding="utf-8")
    err = error_line(capsys, ["train", "--init_from", str(tmp_path / "char" / "latest"), "--data", str(new),
                              "--out_dir", str(tmp_path / "out")])
    assert "'z'" in err and "U+007A" in err


@pytest.mark.parametrize("flags, words", [(["--lora_rank", "0"], "lora_rank must be >= 1"),
                                          (["--lora_rank", "33"], "at most 32"),
                                          (["--lora_rank", "2", "--lora_targets", "attn.c_attn,c_proj"], "unknown layer"),
                                          (["--lora_alpha", "-1", "--lora_rank", "2"], "lora_alpha")])
def test_bad_lora_settings_are_one_line(lab, capsys, flags, words):
    err = error_line(capsys, ["train", "--init_from", str(lab / "gpt2"), "--data", str(lab / "corpus.txt"),
                              "--out_dir", str(lab / "bad_lora"), *flags])
    assert words in err


def test_lora_without_init_from_is_refused(lab, capsys):
    err = error_line(capsys, ["train", "--data", str(lab / "corpus.txt"), "--out_dir", str(lab / "x"), "--lora_rank", "2"])
    assert "--init_from" in err


def _resumable(out, **saved):
    """out/latest as a resumed run finds it: a checkpoint recording the run's flat settings."""
    from numformer.checkpoint import save_checkpoint

    save_checkpoint(out / "latest", model={"w": np.zeros(2, np.float32)}, tokenizer="null",
                    config={"model": {}, "train": {"config": saved}})


def test_resume_compares_lora_targets_as_a_set_of_layers(tmp_path):
    from numformer.errors import UsageError
    from numformer.training.config import resolve

    _resumable(tmp_path, init_from="gpt2", lora_rank=2, lora_targets="attn.c_attn,attn.c_proj")
    for same in ("attn.c_proj,attn.c_attn", "attn.c_attn, attn.c_proj", "attn.c_attn,attn.c_proj"):
        cfg, _ = resolve({"out_dir": str(tmp_path), "lora_targets": same}, resume=True)
        assert set(cfg.lora_targets.replace(" ", "").split(",")) == {"attn.c_attn", "attn.c_proj"}
    with pytest.raises(UsageError, match="lora_targets"):
        resolve({"out_dir": str(tmp_path), "lora_targets": "attn.c_attn,mlp.c_fc"}, resume=True)


# ----------------------------------------------------------------------------- a Llama checkpoint


@pytest.fixture(scope="module")
def llama_src(lab):
    """A short --arch llama run (grouped-query, char tokenizer) to fine-tune from."""
    run(dict(RUN, arch="llama", n_layer=2, n_head=2, n_kv_head=1, n_embd=16, n_hidden=32, block_size=16,
             data=str(lab / "corpus.txt"), out_dir=str(lab / "llama_src"), max_iters=4),
        cache_dir=lab / "cache", plot=False)
    return lab / "llama_src"


def test_init_from_a_llama_checkpoint_with_lora_trains_its_adapters_and_resumes_bit_for_bit(lab, llama_src):
    from numformer.model import load

    common = dict(init_from=str(llama_src), lora_rank=2, lora_targets="q_proj,down_proj")
    train(lab, "llama_lora", max_iters=6, **common)
    train(lab, "llama_lora_halves", max_iters=3, **common)
    run(dict(out_dir=str(lab / "llama_lora_halves"), max_iters=6), resume=True, cache_dir=lab / "cache", plot=False)
    a, b = load(lab / "llama_lora" / "latest"), load(lab / "llama_lora_halves" / "latest")
    np.testing.assert_array_equal(a.adapters.flat, b.adapters.flat)
    start = load(llama_src / "best")                          # what --init_from takes from an out_dir
    assert a.config.family == "llama" and a.lora.targets == ("q_proj", "down_proj")
    np.testing.assert_array_equal(a.params.flat, start.params.flat)             # the base is frozen
    assert np.abs(a.adapters["model.layers.1.mlp.down_proj.lora_B"]).max() > 0
    assert set(a.adapters.views) == {f"model.layers.{i}.{layer}.{part}" for i in range(2)
                                     for layer in ("self_attn.q_proj", "mlp.down_proj") for part in ("lora_A", "lora_B")}


def test_init_from_a_llama_checkpoint_takes_its_arch_and_refuses_contradicting_flags(lab, llama_src, capsys):
    summary = train(lab, "llama_full", init_from=str(llama_src), max_iters=2, eval_interval=2)
    assert summary["step"] == 2
    cfg = load_checkpoint(lab / "llama_full" / "latest").config
    assert cfg["format"] == "numformer-llama" and cfg["train"]["config"]["arch"] == "llama"
    common = ["train", "--init_from", str(llama_src), "--data", str(lab / "corpus.txt"), "--out_dir", str(lab / "bad")]
    assert "--n_kv_head 2 contradicts --init_from" in error_line(capsys, [*common, "--n_kv_head", "2"])
    assert "--arch 'gpt2' contradicts --init_from" in error_line(capsys, [*common, "--arch", "gpt2"])
    assert "--gelu applies to --arch gpt2" in error_line(capsys, [*common, "--gelu", "exact"])
    assert "not a layer of a llama model" in error_line(capsys, [*common, "--lora_rank", "2", "--lora_targets",
                                                                 "attn.c_attn"])
