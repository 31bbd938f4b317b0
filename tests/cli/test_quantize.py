"""--quantize on `sample`, `eval`, `explore` and `bench --generate`: each computes with the weights
rounded as the format stores them (checked against float32 runs of a checkpoint whose weights
were rounded by numformer.ops.quant's formulas and saved), --quantize none is the default, and a
bad value is one line."""

import json
import re

import numpy as np
import pytest

from numformer.cli import main as cli_main
from numformer.model.gpt import GPT
from numformer.model.params import GPT2, LINEAR, WEIGHT
from numformer.ops import quant
from tests.cli.test_one_line_errors import assert_one_line, numformer
from tests.helpers import make_lab

FORMATS = ["int8", "bf16"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A 10-step run, and for each format a float32 checkpoint of its weights rounded by
    ops.quant (quantize, then dequantize): what the quantized model must compute."""
    root = make_lab(tmp_path_factory.mktemp("quantize"))
    model = GPT.load(root / "run" / "best")
    for fmt in FORMATS:
        rounded = GPT.load(root / "run" / "best")
        for p in GPT2.params(model.config):
            if (p.kind == LINEAR and p.part == WEIGHT) or p.name == GPT2.name("wte"):
                rounded.params[p.name][...] = quant.dequantize(quant.quantize(model.params[p.name], fmt))
        rounded.save(root / f"rounded-{fmt}", tokenizer=model.tokenizer.to_json())
    (root / "heldout.txt").write_text("the king shall not be my lord\n" * 20)
    return root


def run(capsys, *args):
    capsys.readouterr()
    assert cli_main([str(a) for a in args]) == 0
    return capsys.readouterr().out


SAMPLE = ["--prompt", "the king", "--max_new_tokens", "40", "--temperature", "0"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_sample_decodes_what_the_rounded_weights_decode(lab, capsys, fmt):
    quantized = run(capsys, "sample", lab / "run", *SAMPLE, "--quantize", fmt)
    rounded = run(capsys, "sample", lab / f"rounded-{fmt}", *SAMPLE)
    assert quantized == rounded and quantized.startswith("the king") and len(quantized) > len("the king") + 30


def test_quantize_none_is_the_default(lab, capsys):
    assert run(capsys, "sample", lab / "run", *SAMPLE, "--quantize", "none") == run(capsys, "sample", lab / "run", *SAMPLE)
    args = ("eval", lab / "run", "--data", lab / "heldout.txt", "--json")
    assert run(capsys, *args, "--quantize", "none") == run(capsys, *args)


@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_scores_the_rounded_weights(lab, capsys, fmt):
    args = ("--data", lab / "heldout.txt", "--json")
    got = json.loads(run(capsys, "eval", lab / "run", *args, "--quantize", fmt))
    want = json.loads(run(capsys, "eval", lab / f"rounded-{fmt}", *args))
    plain = json.loads(run(capsys, "eval", lab / "run", *args))
    assert set(got) == {"loss", "perplexity", "bits_per_byte", "tokens"} and got["tokens"] == want["tokens"]
    assert abs(got["loss"] - want["loss"]) <= 1e-5 * want["loss"]
    assert got["loss"] != plain["loss"]
    text = run(capsys, "eval", lab / "run", "--data", lab / "heldout.txt", "--quantize", fmt)
    assert f"weights {fmt}" in text


def page_data(path):
    html = path.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="numformer-data">(.*?)</script>', html, re.S).group(1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_explore_shows_the_rounded_weights(lab, capsys, tmp_path, fmt):
    run(capsys, "explore", lab / "run", "--prompt", "the king shall", "--out", tmp_path / "q.html", "--quantize", fmt)
    run(capsys, "explore", lab / f"rounded-{fmt}", "--prompt", "the king shall", "--out", tmp_path / "r.html")
    q, r = page_data(tmp_path / "q.html"), page_data(tmp_path / "r.html")
    assert q["token_ids"] == r["token_ids"]
    np.testing.assert_allclose(np.array(q["attention"], dtype=float), np.array(r["attention"], dtype=float), atol=2e-4)
    assert f"--quantize {fmt}" in json.dumps(q)


BENCH = ["bench", "--generate", "--n_layer", "1", "--n_head", "2", "--n_embd", "40", "--vocab_size", "70",
         "--prompt_tokens", "5", "--new_tokens", "6", "--iters", "2", "--json"]


def test_bench_generate_reports_bytes_and_the_floor(tmp_path):
    reports = {}
    for fmt in ("none", *FORMATS):
        p = numformer([*BENCH, "--quantize", fmt], tmp_path)
        assert p.returncode == 0, p.stderr
        r = reports[fmt] = json.loads(p.stdout)
        assert r["mode"] == "generate" and r["quantize"] == fmt and r["batch_size"] == 1
        for key in ("ms_per_token", "tokens_per_sec", "prompt_ms", "weight_bytes", "weight_bytes_per_token",
                    "copy_bytes_per_sec", "floor_ms_per_token", "rss_bytes"):
            assert isinstance(r[key], (int, float)) and np.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["tokens_per_sec"] == pytest.approx(1000 / r["ms_per_token"], rel=1e-9)
        assert r["floor_ms_per_token"] == pytest.approx(1000 * r["weight_bytes_per_token"] / r["copy_bytes_per_sec"],
                                                        rel=1e-9)
        assert r["config"]["block_size"] >= 5 + 6 - 1
    # the bytes a token reads, counted by hand. A row of 40 inputs is two int8 blocks (32 and a
    # short one of 8), a row of 160 (the MLP's second map) five.
    C, V, H = 40, 70, 4 * 40
    matrices = 3 * C * C + C * C + H * C + C * H + V * C           # the four maps and the tied head
    scales = 2 * (3 * C + C + H + V) + 5 * C                        # their blocks' scales
    small = (3 * C + C + H + C) + 4 * C + 2 * C                     # biases, two LayerNorms, ln_f
    lookup = C                                                      # one row of wte (2 scales in int8)
    assert reports["none"]["weight_bytes_per_token"] == 4 * (matrices + small + lookup)
    assert reports["bf16"]["weight_bytes_per_token"] == 2 * (matrices + lookup) + 4 * small
    assert reports["int8"]["weight_bytes_per_token"] == (matrices + lookup) + 4 * (scales + 2) + 4 * small


@pytest.mark.parametrize("command", [["sample"], ["eval", "--data", "x.txt"], ["explore"], ["bench", "--generate"]])
def test_a_bad_quantize_value_is_one_line(lab, tmp_path, command):
    r = numformer([*command, str(lab / "run"), "--quantize", "int4"] if command[0] != "bench"
                  else [*command, "--quantize", "int4"], tmp_path)
    assert_one_line(r, "--quantize", "int4", "none", "bf16", "int8", code=2)


def test_bench_quantize_needs_generate(tmp_path):
    r = numformer(["bench", "--quantize", "int8"], tmp_path)
    assert_one_line(r, "--quantize", "--generate", code=2)


def test_bench_generate_times_a_quantized_llama(tmp_path):
    """The Llama of issue 20 decodes with quantized weights as the GPT does: its untied head and
    token embedding quantized, the embedding read a row a token."""
    args = ["bench", "--generate", "--arch", "llama", "--n_layer", "1", "--n_head", "4", "--n_kv_head", "2",
            "--n_embd", "32", "--n_hidden", "64", "--vocab_size", "50", "--prompt_tokens", "3", "--new_tokens", "4",
            "--iters", "1", "--json"]
    p = numformer([*args, "--quantize", "bf16"], tmp_path)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    C, V, H = 32, 50, 64
    matrices = C * C + 2 * (C // 2) * C + C * C + 2 * H * C + C * H + V * C    # q, k, v (2 of 4 heads), o, gate, up, down, head
    norms = 2 * C + C
    assert r["quantize"] == "bf16" and r["config"]["n_kv_head"] == 2
    assert r["weight_bytes_per_token"] == 2 * (matrices + C) + 4 * norms    # + one row of the embedding
