"""What real GPT-2 folders hold: bfloat16 weights, vocab.json + merges.txt instead of
tokenizer.json; and adapters merged on export. transformers is the oracle throughout."""

import json

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel, GPT2Tokenizer

from numformer.data.tokenizer import BPETokenizer, from_json
from numformer.interop.gpt2 import export_hf_gpt2, import_hf_gpt2
from numformer.model.adapters import LoRAConfig
from numformer.model.gpt import GPT
from numformer.reference.gpt2_folder import make_gpt2_folder
from tests.helpers import TEXT


def logits_of(hf, idx):
    with torch.no_grad():
        return hf(torch.tensor(idx)).logits.float().numpy()


def test_bfloat16_folder_imports_with_the_logits_of_its_float32_widening(tmp_path):
    folder = make_gpt2_folder(tmp_path / "bf16", TEXT, vocab_size=300, n_embd=32, n_positions=32, bfloat16=True)
    header = json.loads((folder / "model.safetensors").read_bytes()[8:8 + 4096].split(b"}}")[0] + b"}}")
    assert {e["dtype"] for k, e in header.items() if k != "__metadata__"} == {"BF16"}
    hf = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32).eval()   # bf16 widened by torch
    ours = GPT.from_hf(folder)
    for name, p in hf.transformer.named_parameters():
        if name in ("wte.weight", "ln_f.weight") or name.endswith("attn.c_attn.weight"):
            w = ours.params[f"transformer.{name}"]
            theirs = p.detach().numpy()
            np.testing.assert_array_equal(w.T if name.endswith("c_attn.weight") else w, theirs)  # exact widening
    idx = np.random.default_rng(0).integers(0, hf.config.vocab_size, size=(2, 32))
    diff = np.abs(ours.eval().forward(idx) - logits_of(hf, idx)).max()
    assert diff <= 1e-5 * max(1.0, np.abs(logits_of(hf, idx)).max())


def test_vocab_and_merges_become_gpt2s_tokenizer_and_travel_into_the_checkpoint(tmp_path):
    folder = make_gpt2_folder(tmp_path / "hf", TEXT, vocab_size=400, n_embd=16)
    assert not (folder / "tokenizer.json").exists() and (folder / "merges.txt").is_file()
    notes = import_hf_gpt2(folder, tmp_path / "ckpt")
    assert not any("tokenizer" in n for n in notes)
    tok = GPT.load(tmp_path / "ckpt").tokenizer
    V = json.loads((folder / "config.json").read_text())["vocab_size"]
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == V
    ref = GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))    # transformers' Python BPE
    for text in [TEXT[:300], "Naïve café — 我爱 <|endoftext|>Speak,  speak!\n\n", " leading space", ""]:
        ids = tok.encode(text)
        assert ids.tolist() == ref.encode(text), text
        assert tok.decode(ids) == text
    assert tok.encode("<|endoftext|>").tolist() == [V - 1]        # never split: a special token
    assert from_json(tok.to_json()) == tok                         # what the checkpoint stores reads back


@pytest.mark.parametrize("missing", ["merges.txt", "vocab.json"])
def test_half_a_tokenizer_is_left_out_with_a_note(tmp_path, missing):
    folder = make_gpt2_folder(tmp_path / "hf", TEXT, vocab_size=300, n_embd=16)
    (folder / missing).unlink()
    model = GPT.from_hf(folder)
    assert model.tokenizer is None
    assert any(f"no {missing}" in n for n in model.hf_notes)


def test_damaged_merges_is_a_note_not_a_traceback(tmp_path):
    folder = make_gpt2_folder(tmp_path / "hf", TEXT, vocab_size=300, n_embd=16)
    (folder / "merges.txt").write_text("#version: 0.2\nzz qq\n", encoding="utf-8")
    model = GPT.from_hf(folder)
    assert model.tokenizer is None
    assert any("merges.txt: line 2 merges 'zz' and 'qq'" in n and "\n" not in n for n in model.hf_notes)


def test_export_merges_the_adapters_and_transformers_computes_the_same_logits(tmp_path):
    folder = make_gpt2_folder(tmp_path / "hf", TEXT, vocab_size=300, n_embd=32, n_positions=32)
    base = GPT.from_hf(folder)
    model = GPT(base.config, lora=LoRAConfig(4, 8.0, ("attn.c_attn", "attn.c_proj", "mlp.c_fc")))
    model.params.flat[...] = base.params.flat
    model.adapters.flat[...] = np.random.default_rng(1).normal(0, 0.2, model.adapters.size)
    model.save(tmp_path / "ckpt", tokenizer=base.tokenizer.to_json())
    loaded = GPT.load(tmp_path / "ckpt")
    assert loaded.lora == model.lora
    np.testing.assert_array_equal(loaded.adapters.flat, model.adapters.flat)
    notes = export_hf_gpt2(tmp_path / "ckpt", tmp_path / "out")
    assert any("merged into the weights" in n for n in notes)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    idx = np.random.default_rng(2).integers(0, base.config.vocab_size, size=(3, 32))
    ours = model.eval().forward(idx)
    assert np.abs(ours - base.eval().forward(idx)).max() > 1e-2          # the adapters matter
    assert np.abs(ours - logits_of(hf, idx)).max() <= 1e-5 * max(1.0, np.abs(ours).max())


def _vocab_edit(change):
    def edit(folder):
        file = folder / "vocab.json"
        vocab = json.loads(file.read_text(encoding="utf-8"))
        file.write_text(json.dumps(change(vocab), ensure_ascii=False), encoding="utf-8")
    return edit


def _merges_edit(text):
    def edit(folder):
        (folder / "merges.txt").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return edit


# each damage -> the file and the words the one line must hold
DAMAGED = {
    "vocab-not-json": (lambda f: (f / "vocab.json").write_text("{not json"), "vocab.json", "invalid JSON"),
    "vocab-a-list": (_vocab_edit(lambda v: list(v)), "vocab.json", "found list"),
    "vocab-string-ids": (_vocab_edit(lambda v: {k: str(i) for k, i in v.items()}), "vocab.json", "not an integer"),
    "vocab-negative-id": (_vocab_edit(lambda v: {**v, "zz": -5}), "vocab.json", "-5"),
    "vocab-huge-id": (_vocab_edit(lambda v: {**v, "zz": 10**12}), "vocab.json", "1000000000000"),
    "vocab-repeated-id": (_vocab_edit(lambda v: {**v, "zz": 3}), "vocab.json", "id 3"),
    "merges-unknown-token": (_merges_edit("#version: 0.2\nzz qq\n"), "merges.txt", "'zz'"),
    "merges-unknown-result": (_merges_edit("#version: 0.2\nQ Z\n"), "merges.txt", "'QZ'"),   # Q, Z: base bytes
    "merges-three-parts": (_merges_edit("#version: 0.2\nĠ t h\n"), "merges.txt", "line 2"),
    "merges-not-utf8": (_merges_edit(b"#version: 0.2\n\xff \xfe\n"), "merges.txt", "UTF-8"),
}


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return make_gpt2_folder(tmp_path_factory.mktemp("damaged") / "hf", TEXT, vocab_size=300, n_embd=16)


def _damaged(gpt2_folder, tmp_path, case):
    import shutil

    folder = tmp_path / case
    shutil.copytree(gpt2_folder, folder)
    DAMAGED[case][0](folder)
    return folder, folder / DAMAGED[case][1], DAMAGED[case][2]


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_vocab_or_merges_is_left_out_with_the_reason_naming_the_file(gpt2_folder, tmp_path, case):
    folder, file, word = _damaged(gpt2_folder, tmp_path, case)
    model = GPT.from_hf(folder)
    assert model.tokenizer is None
    (note,) = [n for n in model.hf_notes if "tokenizer" in n]
    assert note.startswith(f"{file}: ") and word in note and "\n" not in note, note


@pytest.mark.parametrize("case", ["vocab-string-ids", "vocab-huge-id", "merges-unknown-token"])
def test_init_from_a_folder_with_a_damaged_tokenizer_says_why(gpt2_folder, tmp_path, capsys, case):
    from numformer.cli import main as cli_main

    folder, file, word = _damaged(gpt2_folder, tmp_path, case)
    (tmp_path / "c.txt").write_text(TEXT)
    capsys.readouterr()
    code = cli_main(["train", "--init_from", str(folder), "--data", str(tmp_path / "c.txt"), "--max_iters", "1",
                     "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and f"{file}: " in err and word in err, err
