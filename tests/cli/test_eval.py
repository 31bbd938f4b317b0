"""`numformer eval` against the same computation in transformers on the exported model."""

import json
import warnings
import math

import numpy as np
import pytest
import torch

from numformer.cli import main as cli_main
from numformer.interop.gpt2 import export_hf_gpt2
from numformer.model.adapters import LoRAConfig
from numformer.model.evaluate import windows
from numformer.model.gpt import GPT
from numformer.reference.gpt2_folder import make_gpt2_folder
from tests.helpers import TEXT

BLOCK = 32


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A checkpoint with adapters (the harder case: its export is merged) and its export."""
    root = tmp_path_factory.mktemp("eval")
    hf_dir = make_gpt2_folder(root / "gpt2", TEXT, vocab_size=300, n_embd=32, n_positions=BLOCK, seed=3)
    base = GPT.from_hf(hf_dir)
    model = GPT(base.config, lora=LoRAConfig(2, 4.0, ("attn.c_attn", "mlp.c_proj")))
    model.params.flat[...] = base.params.flat
    model.adapters.flat[...] = np.random.default_rng(0).normal(0, 0.3, model.adapters.size)
    model.save(root / "ckpt", tokenizer=base.tokenizer.to_json())
    export_hf_gpt2(root / "ckpt", root / "export")
    (root / "text.txt").write_text(TEXT[:1500], encoding="utf-8")
    return root


def transformers_eval(folder, ids, stride):
    """The same windows, with transformers' GPT2LMHeadModel and torch's log-softmax: Σ −ln p."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    total, n, scored = 0.0, 0, 0
    begin = 0
    while scored < len(ids) - 1:
        end = min(begin + BLOCK, len(ids) - 1)
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor(ids[begin:end])[None]).logits[0].double(), dim=-1)
        for t in range(begin + 1, end + 1):            # target token t, predicted at position t - 1 - begin
            if t > scored:
                total -= logp[t - 1 - begin, ids[t]].item()
                n += 1
        scored, begin = end, begin + stride
    return total, n


def run_eval(capsys, *args):
    capsys.readouterr()
    assert cli_main(["eval", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("stride", [None, 16, 7, 1])
def test_eval_matches_transformers_on_the_exported_model(lab, capsys, stride):
    got = run_eval(capsys, lab / "ckpt", "--data", lab / "text.txt", *(["--stride", stride] if stride else []))
    assert set(got) == {"loss", "perplexity", "bits_per_byte", "tokens"}
    text = (lab / "text.txt").read_text(encoding="utf-8")
    ids = GPT.load(lab / "ckpt").tokenizer.encode(text).tolist()
    total, n = transformers_eval(lab / "export", ids, stride or BLOCK)
    assert n == len(ids) - 1 and got["tokens"] == len(ids)        # every token after the first, once
    assert abs(got["loss"] - total / n) <= 1e-5 * total / n
    assert abs(got["perplexity"] - math.exp(total / n)) <= 1e-4 * math.exp(total / n)
    assert abs(got["bits_per_byte"] - total / math.log(2) / len(text.encode())) <= 1e-5 * got["bits_per_byte"]


def test_an_out_dir_means_its_best_checkpoint(lab, tmp_path, capsys):
    import shutil

    shutil.copytree(lab / "ckpt", tmp_path / "out" / "best")
    a = run_eval(capsys, tmp_path / "out", "--data", lab / "text.txt", "--stride", 9)
    b = run_eval(capsys, lab / "ckpt", "--data", lab / "text.txt", "--stride", 9)
    assert a == b


def test_windows_score_each_token_once():
    for n, T, S in [(2, 4, 4), (10, 4, 4), (10, 4, 1), (11, 4, 3), (100, 16, 5), (5, 8, 8)]:
        seen = []
        for b, e, first in windows(n, T, S):
            assert e - b <= T and b < first <= e + 1
            seen += list(range(first, e + 1))
        assert seen == list(range(1, n)), (n, T, S)


def error_line(capsys, *args):
    capsys.readouterr()
    code = cli_main(["eval", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("numformer eval: error:") and "\n" not in err, err
    return err


def test_bad_inputs_are_one_line(lab, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "is empty" in error_line(capsys, lab / "ckpt", "--data", empty)
    one = tmp_path / "one.txt"
    one.write_text("a")
    assert "at least two" in error_line(capsys, lab / "ckpt", "--data", one)
    assert "no such file" in error_line(capsys, lab / "ckpt", "--data", tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff")
    assert "UTF-8" in error_line(capsys, lab / "ckpt", "--data", bad)
    assert "--stride" in error_line(capsys, lab / "ckpt", "--data", lab / "text.txt", "--stride", BLOCK + 1)
    assert "--stride" in error_line(capsys, lab / "ckpt", "--data", lab / "text.txt", "--stride", 0)
    assert "no such folder" in error_line(capsys, tmp_path / "nowhere", "--data", lab / "text.txt")


# ----------------------------------------------------------------------------- read as train reads


def _as_crlf_with_bom(path, text):
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    return path


def test_a_crlf_file_with_a_bom_is_read_as_training_reads_it(lab, tmp_path, capsys):
    """Training makes \\r\\n and \\r into \\n and drops a BOM; eval must score the same tokens."""
    from numformer.data.batches import prepare
    from numformer.data.corpus import open_corpus

    text = (lab / "text.txt").read_text(encoding="utf-8")
    crlf = _as_crlf_with_bom(tmp_path / "crlf.txt", text)
    mac = tmp_path / "cr.txt"
    mac.write_bytes(text.replace("\n", "\r").encode("utf-8"))
    lf = run_eval(capsys, lab / "ckpt", "--data", lab / "text.txt")
    assert run_eval(capsys, lab / "ckpt", "--data", crlf) == lf
    assert run_eval(capsys, lab / "ckpt", "--data", mac) == lf
    train, val, _ = prepare(open_corpus(crlf), GPT.load(lab / "ckpt").tokenizer, cache_dir=tmp_path / "cache")
    assert lf["tokens"] == len(train) + len(val)


def test_a_char_model_reads_its_own_crlf_training_file(tmp_path, capsys):
    from numformer import GPTConfig
    from numformer.data.tokenizer import CharTokenizer

    text = "".join(TEXT.split("Naïve")[0]) * 2
    tok = CharTokenizer.from_text(text)                     # the vocabulary training builds: no "\r"
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    model.save(tmp_path / "ckpt", tokenizer=tok.to_json())
    (tmp_path / "lf.txt").write_text(text, encoding="utf-8")
    crlf = _as_crlf_with_bom(tmp_path / "crlf.txt", text)
    assert run_eval(capsys, tmp_path / "ckpt", "--data", crlf) == run_eval(capsys, tmp_path / "ckpt", "--data",
                                                                           tmp_path / "lf.txt")


# ----------------------------------------------------------------------------- streamed


@pytest.mark.parametrize("stride", [None, 7])
def test_a_file_is_scored_in_pieces_with_the_same_loss(lab, capsys, monkeypatch, stride):
    """Read 64 bytes at a time: no encode ever sees the whole text, and the loss is transformers'."""
    from numformer.data import corpus
    from numformer.data.tokenizer import BPETokenizer

    monkeypatch.setattr(corpus, "CHUNK_BYTES", 64)
    monkeypatch.setattr(corpus, "CHUNK_CHARS", 50)
    seen = []
    real = BPETokenizer.encode
    monkeypatch.setattr(BPETokenizer, "encode", lambda self, text, **kw: seen.append(len(text)) or real(self, text, **kw))
    got = run_eval(capsys, lab / "ckpt", "--data", lab / "text.txt", *(["--stride", stride] if stride else []))
    text = (lab / "text.txt").read_text(encoding="utf-8")
    assert len(seen) > 10 and max(seen) < len(text) // 5
    ids = GPT.load(lab / "ckpt").tokenizer.encode(text).tolist()
    total, n = transformers_eval(lab / "export", ids, stride or BLOCK)
    assert got["tokens"] == len(ids)
    assert abs(got["loss"] - total / n) <= 1e-5 * total / n
    assert abs(got["bits_per_byte"] - total / math.log(2) / len(text.encode())) <= 1e-5 * got["bits_per_byte"]


def test_streamed_windows_are_the_planned_windows():
    """The windows the stream scores, batch by batch, are windows() of the whole text, in order."""
    from numformer.model import evaluate

    for n, T, S, per_batch in [(2, 4, 4, 3), (10, 4, 4, 2), (10, 4, 1, 3), (11, 4, 3, 1), (100, 16, 5, 4),
                               (5, 8, 8, 8), (17, 4, 4, 2), (16, 4, 4, 2)]:
        ids = np.arange(n)
        for cut in (1, 3, n):
            parts = [ids[i:i + cut] for i in range(0, n, cut)]
            got = []
            for x, y in evaluate.window_batches(parts, T, S, per_batch):
                for xr, yr in zip(x, y):
                    b, e = int(xr[0]), int(xr[-1]) + 1
                    first = int(yr[yr != -1][0]) if (yr != -1).any() else None
                    assert np.array_equal(xr, np.arange(b, e))
                    assert np.array_equal(yr[yr != -1], np.arange(first, e + 1))
                    got.append((b, e, first))
            assert got == windows(n, T, S), (n, T, S, cut)


# ----------------------------------------------------------------------------- no loss to report


def test_a_model_that_overflows_is_an_error_not_nan(lab, tmp_path, capsys):
    model = GPT.load(lab / "ckpt")
    model.params["transformer.ln_f.weight"][...] = 3e38          # finite, but the logits are not
    model.save(tmp_path / "huge", tokenizer=model.tokenizer.to_json())
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # NumPy's overflow warnings would be lines before it
        err = error_line(capsys, tmp_path / "huge", "--data", lab / "text.txt", "--json", "--threads", "2")
    assert "not finite" in err and "text.txt" in err


def test_a_loss_past_exp_range_gives_strict_json(lab, tmp_path, capsys):
    """A finite loss of 710 nats or more has no float perplexity: --json says null, never Infinity."""
    model = GPT.load(lab / "ckpt")
    model.params["transformer.ln_f.weight"][...] *= 1e4            # logits thousands apart, still finite
    model.save(tmp_path / "sharp", tokenizer=model.tokenizer.to_json())
    capsys.readouterr()
    assert cli_main(["eval", str(tmp_path / "sharp"), "--data", str(lab / "text.txt"), "--json"]) == 0
    out = capsys.readouterr().out
    got = json.loads(out, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert math.isfinite(got["loss"]) and got["loss"] > math.log(np.finfo(np.float64).max)
    assert got["perplexity"] is None
