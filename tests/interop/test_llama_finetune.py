"""`numformer train --init_from DIR` from Llama-family folders, with and without LoRA, and the
fine-tuned model back out to transformers."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from numformer.checkpoint import load_checkpoint
from numformer.cli import main as cli_main
from numformer.interop.hf_folder import read_weights
from numformer.interop.llama import export_hf_llama
from numformer.model import load
from numformer.model.llama import Llama
from numformer.reference.llama_folder import make_llama_folder
from numformer.training import run
from tests.helpers import TEXT

RUN = dict(batch_size=4, max_iters=6, eval_interval=3, eval_iters=2, warmup_iters=0, learning_rate=3e-3,
           min_lr=3e-4, lr_decay_iters=6, sample_tokens=0)
ALL_MAPS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-llama")
    (root / "corpus.txt").write_text(TEXT * 3, encoding="utf-8")
    make_llama_folder(root / "llama", TEXT, arch="llama", vocab_size=300, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=32, n_hidden=64, block_size=32)
    make_llama_folder(root / "qwen2", TEXT, arch="qwen2", vocab_size=300, n_layer=2, n_head=4, n_kv_head=1,
                      n_embd=32, n_hidden=64, block_size=64, tie=True, dtype="bfloat16")
    return root


def train(lab, name, folder="llama", **kw):
    settings = dict(RUN, data=str(lab / "corpus.txt"), out_dir=str(lab / name), init_from=str(lab / folder))
    settings.update(kw)
    return run(settings, cache_dir=lab / "cache", plot=False)


def rows(lab, name):
    return [json.loads(line) for line in (lab / name / "metrics.jsonl").read_text().splitlines()]


def test_init_from_a_llama_folder_starts_from_its_weights_and_learns(lab):
    train(lab, "full", max_iters=30, eval_interval=30, learning_rate=1e-2)
    r = rows(lab, "full")
    assert r[-1]["val_loss"] < r[0]["val_loss"] - 1.0, r
    ckpt = load_checkpoint(lab / "full" / "latest")
    assert ckpt.config["format"] == "numformer-llama" and ckpt.config["model"]["n_kv_head"] == 2
    model = load(lab / "full" / "latest")
    assert isinstance(model, Llama) and model.tokenizer.special_tokens["bos_token"] == "<|begin_of_text|>"
    # the step-0 evaluation is of the imported weights: transformers' loss on a window of the corpus
    hf = AutoModelForCausalLM.from_pretrained(lab / "llama", dtype=torch.float32).eval()
    ids = model.tokenizer.encode((lab / "corpus.txt").read_text())
    x = torch.tensor(ids[:32 * 8].reshape(8, 32))
    with torch.no_grad():
        start = hf(x, labels=x).loss.item()
    assert abs(r[0]["val_loss"] - start) < 0.1         # a random model: near ln V on any windows


def test_lora_on_every_map_trains_only_the_adapters_and_exports_merged(lab, tmp_path):
    train(lab, "lora", folder="qwen2", lora_rank=4, lora_alpha=8, lora_targets=ALL_MAPS, learning_rate=1e-2)
    ckpt = load_checkpoint(lab / "lora" / "latest")
    original = read_weights(lab / "qwen2")
    for name, w in ckpt.model.items():
        if "lora_" not in name:
            np.testing.assert_array_equal(w, original[name].astype(np.float32))   # the base weights are frozen
    adapted = {n.split(".")[-2] for n in ckpt.model if n.endswith("lora_B") and np.abs(ckpt.model[n]).max() > 0}
    assert adapted == set(ALL_MAPS.split(","))
    model = load(lab / "lora" / "latest").eval()
    export_hf_llama(lab / "lora" / "latest", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    idx = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(2, 40))
    ours = model.forward(idx)
    with torch.no_grad():
        theirs = hf(torch.tensor(idx)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_a_shorter_context_may_be_chosen_for_a_llama(lab, capsys):
    train(lab, "short", folder="qwen2", block_size=16, max_iters=1, eval_interval=1)
    assert load_checkpoint(lab / "short" / "latest").config["model"]["block_size"] == 16
    capsys.readouterr()
    code = cli_main(["train", "--init_from", str(lab / "qwen2"), "--data", str(lab / "corpus.txt"),
                     "--out_dir", str(lab / "long"), "--block_size", "65"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err
    assert "--block_size 65 contradicts" in err and "for a Llama --block_size lowered" in err


@pytest.mark.parametrize("flag, value", [("--n_kv_head", "1"), ("--rope_theta", "500000"), ("--arch", "gpt2"),
                                         ("--tie_embeddings", "true")])
def test_a_model_flag_that_contradicts_the_folder_is_one_line(lab, capsys, flag, value):
    code = cli_main(["train", "--init_from", str(lab / "llama"), "--data", str(lab / "corpus.txt"),
                     "--out_dir", str(lab / "x"), flag, value])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and f"{flag} " in err and "contradicts --init_from" in err, err
