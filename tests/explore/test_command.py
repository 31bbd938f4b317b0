"""`numformer explore` on the command line: finding the checkpoint, the prompt, and bad input."""

import argparse
import json
import re

import numpy as np

from numformer.explore import is_explorer_page

from .conftest import cli
from .test_page import embedded


def test_default_checkpoint_and_metrics(trained_run, tmp_path):
    """From the folder that holds out/: out/best is used, metrics.jsonl is found."""
    root = trained_run.parent
    r = cli(["explore", "--prompt", "ROMEO:"], cwd=root)
    assert r.returncode == 0, r.stderr
    page = root / "explorer.html"
    assert page.is_file() and f"wrote {page.name}" in r.stdout
    d = embedded(page.read_text(encoding="utf-8"))
    assert d["tokens"] == list("ROMEO:")
    assert d["model"]["source"].endswith("best")
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in d["metrics"]] == [r["step"] for r in rows]
    assert [m["val_loss"] for m in d["metrics"]] == [r["val_loss"] for r in rows]


def test_checkpoint_folder_prompt_file_and_out(trained_run, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("JULIET:\nO Romeo", encoding="utf-8")
    out = tmp_path / "sub" / "page.html"
    r = cli(["explore", trained_run / "latest", "--prompt_file", prompt, "--out", out, "--temperature", "1.2",
             "--top_k", "0", "--top_p", "0.9"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = embedded(out.read_text(encoding="utf-8"))
    assert "".join(d["tokens"]) == "JULIET:\nO Romeo"
    assert d["model"]["source"].endswith("latest")
    assert d["metrics"]                                     # the run folder above the checkpoint
    assert d["sampling"] == {"temperature": 1.2, "top_k": None, "top_p": 0.9}


def test_long_prompt_keeps_the_last_block(saved_model, tmp_path):
    path, model = saved_model
    prompt = "ROMEO:\nBut soft, what light through yonder window breaks?"
    r = cli(["explore", path, "--prompt", prompt, "--out", tmp_path / "p.html"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("numformer explore: note:") and "last 32" in notes[0]
    d = embedded((tmp_path / "p.html").read_text(encoding="utf-8"))
    assert "".join(d["tokens"]) == prompt[-32:]
    assert d["notice"] and "last 32" in d["notice"]


def one_line_error(r, pattern):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert re.match(r"numformer explore: error: ", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


def test_unknown_character_as_in_sample(saved_model, tmp_path):
    path, _ = saved_model
    r = cli(["explore", path, "--prompt", "ROMEO: Ω", "--out", tmp_path / "p.html"], cwd=tmp_path)
    one_line_error(r, r"character 'Ω' \(U\+03A9\) at position 7")
    s = cli(["sample", "--out_dir", path, "--prompt", "ROMEO: Ω", "--max_new_tokens", "1"], cwd=tmp_path)
    assert r.stderr.split("error: ")[1] == s.stderr.split("error: ")[1]
    assert not (tmp_path / "p.html").exists()


def test_bad_input(saved_model, tmp_path):
    path, _ = saved_model
    one_line_error(cli(["explore", "--prompt", "R"], cwd=tmp_path), r"out: no such folder")
    one_line_error(cli(["explore", path, "--prompt", ""], cwd=tmp_path), r"no tokens")
    one_line_error(cli(["explore", path, "--prompt", "R", "--top_p", "0"], cwd=tmp_path), r"--top_p")
    one_line_error(cli(["explore", path, "--prompt", "R", "--temperature", "-1"], cwd=tmp_path), r"--temperature")
    one_line_error(cli(["explore", path, "--prompt_file", tmp_path / "nope.txt"], cwd=tmp_path), r"not found")
    one_line_error(cli(["explore", path, "--prompt", "R", "--out", tmp_path], cwd=tmp_path), r"is a folder")


def test_never_overwrites_a_file_it_did_not_write(saved_model, tmp_path):
    path, _ = saved_model
    mine = tmp_path / "explorer.html"
    mine.write_text("<html>my own notes</html>", encoding="utf-8")
    r = cli(["explore", path, "--prompt", "R"], cwd=tmp_path)
    one_line_error(r, r"is not a page numformer explore wrote")
    assert mine.read_text(encoding="utf-8") == "<html>my own notes</html>"
    # a page it wrote is replaced
    other = tmp_path / "page.html"
    assert cli(["explore", path, "--prompt", "R", "--out", other], cwd=tmp_path).returncode == 0
    assert is_explorer_page(other)
    r = cli(["explore", path, "--prompt", "ROMEO", "--out", other], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert embedded(other.read_text(encoding="utf-8"))["tokens"] == list("ROMEO")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explorer.html", "page.html"]   # no temp files left


def test_starting_controls_are_samples_defaults():
    from numformer.commands import sample as generate
    from numformer.commands import explore

    ours, theirs = argparse.ArgumentParser(), argparse.ArgumentParser()
    explore.add_arguments(ours)
    generate.add_arguments(theirs)
    for name in ("temperature", "top_k", "top_p", "prompt", "prompt_file"):
        assert ours.get_default(name) == theirs.get_default(name), name


def strict_json(text):
    """JSON.parse's JSON: NaN and Infinity are not numbers there."""
    def refuse(name):
        raise AssertionError(f"{name} in the page's JSON")
    return json.loads(text, parse_constant=refuse)


def overflowing_models(tmp_path):
    """Checkpoints of finite weights whose numbers overflow float32: in the head only (a token the
    prompt does not use has a huge embedding, so the tied head's logits for it are ±inf or NaN), and
    everywhere (the prompt's first token has one, so the residual stream and all after it overflow)."""
    from .conftest import tiny_model

    out = {}
    for name, char in (("head", "\t"), ("everywhere", "R")):
        model = tiny_model()
        model.params["transformer.wte.weight"][model.tokenizer.encode(char)[0]] = 3e38
        model.save(tmp_path / name, tokenizer=model.tokenizer.to_json())
        out[name] = tmp_path / name
    return out


def test_weights_that_overflow_give_valid_json_and_say_so(tmp_path):
    """json.dumps(allow_nan=False) raised on the inf and NaN logits: a traceback, no page."""
    for name, ckpt in overflowing_models(tmp_path).items():
        out = tmp_path / f"{name}.html"
        r = cli(["explore", ckpt, "--prompt", "ROMEO:", "--out", out], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        notes = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(notes) == 1 and re.match(r"numformer explore: note: .*not finite", notes[0]), r.stderr
        html = out.read_text(encoding="utf-8")
        d = strict_json(re.search(r'id="numformer-data">(.*?)</script>', html, re.S).group(1))
        assert "not finite" in d["notice"]
        logits = np.array(d["logits"]["values"], dtype=object)
        assert any(v is None for v in logits.ravel())
        if name == "head":                                  # what stayed finite is still shown
            assert all(v is not None for v in np.ravel(d["attention"]))
            assert all(v is not None for v in logits[:, 5])
        else:
            assert all(v is None for v in np.ravel(d["residual_norms"])[len(d["tokens"]):])


def test_paths_that_are_not_utf8(saved_model, tmp_path):
    """A checkpoint folder and an --out whose names hold bytes that are not UTF-8 (Python hands them
    over as lone surrogates): the page is written to the real path and shows the names with U+FFFD;
    the line on stdout too, even where stdout refuses surrogates."""
    import os
    import shutil
    import subprocess
    import sys

    path, _ = saved_model
    ckpt = tmp_path / os.fsdecode(b"ckpt-\xff")
    shutil.copytree(path, ckpt)
    out = tmp_path / os.fsdecode(b"page-\xfe.html")
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    r = subprocess.run([sys.executable, "-m", "numformer", "explore", ckpt, "--prompt", "R", "--out", out],
                       capture_output=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    assert os.fsencode(out.name) in os.listdir(os.fsencode(tmp_path))
    html = out.read_bytes().decode("utf-8")
    d = embedded(html)
    assert d["model"]["source"].endswith("ckpt-\ufffd")
    assert "<title>numformer explore: " in html and "ckpt-\ufffd</title>" in html
    assert r.stdout.decode("utf-8").startswith(f"wrote {tmp_path}/page-\ufffd.html")
    # and it is ours: the next run replaces it
    r = subprocess.run([sys.executable, "-m", "numformer", "explore", ckpt, "--prompt", "RO", "--out", out],
                       capture_output=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode("utf-8", "replace")
    assert embedded(out.read_bytes().decode("utf-8"))["tokens"] == ["R", "O"]


def test_the_guides_example_fills_most_of_the_default_context():
    """The explorer's first documented command used --prompt "ROMEO:": a page of 6 tokens. Its
    example (now in the user guide's explorer page, docs/guide/explorer.md) is a prompt the default
    model can encode, near its context, and the page says how long."""
    from pathlib import Path

    from numformer.data.corpus import shakespeare
    from numformer.training.config import TrainConfig

    section = (Path(__file__).parents[2] / "docs" / "guide" / "explorer.md").read_text(encoding="utf-8")
    prompt = re.search(r'```bash\nnumformer explore --prompt "(.*?)"', section, re.S).group(1)
    cfg = TrainConfig()
    assert cfg.tokenizer == "char" and set(prompt) <= set(shakespeare())     # a token a character
    assert 48 <= len(prompt) <= cfg.model.block_size
    assert f"is {len(prompt)} tokens of the default model's {cfg.model.block_size}" in " ".join(section.split())
    assert "fonts-noto-cjk" in section


def test_the_checkpoint_as_out_dir_too(saved_model, tmp_path):
    """`numformer sample` names the checkpoint with --out_dir; explore takes that form as well as
    its folder argument, and refuses the two naming different folders."""
    path, _ = saved_model
    r = cli(["explore", "--out_dir", path, "--prompt", "R", "--out", tmp_path / "a.html"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert embedded((tmp_path / "a.html").read_text(encoding="utf-8"))["model"]["source"] == str(path)
    r = cli(["explore", path, "--out-dir", f"{path}/", "--prompt", "R", "--out", tmp_path / "b.html"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr                                 # the same folder twice
    r = cli(["explore", path, "--out_dir", tmp_path, "--prompt", "R", "--out", tmp_path / "c.html"], cwd=tmp_path)
    one_line_error(r, r"name different folders; give one of them")
    assert r.returncode == 2 and not (tmp_path / "c.html").exists()
    assert "--out_dir" in cli(["explore", "--help"], cwd=tmp_path).stdout


# ----------------------------------------------------------------------------- a Llama


def test_a_llama_checkpoint(trained_llama_run, tmp_path):
    """`numformer train --arch llama`'s run: the page shows the checkpoint's attention per query
    head, which key/value head each one reads, the rotation, and the run's curves."""
    from numformer.explore import trace
    from numformer.model.llama import Llama

    out = tmp_path / "p.html"
    r = cli(["explore", trained_llama_run, "--prompt", "ROMEO:\nBut", "--out", out], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 layers x 4 heads (2 key/value)" in r.stdout
    d = embedded(out.read_text(encoding="utf-8"))
    model = Llama.load(trained_llama_run / "best")
    tr = trace(model, model.tokenizer.encode("ROMEO:\nBut"))
    assert d["model"]["family"] == "llama" and d["kv_heads"] == [0, 0, 1, 1]
    np.testing.assert_allclose(np.array(d["attention"]), np.stack(tr.attention), rtol=0, atol=1e-6)
    assert d["positions"]["kind"] == "rope" and [m["step"] for m in d["metrics"]] == [0, 3, 6]


def rounded_llama(run, folder, fmt):
    """A float32 checkpoint of the run's Llama whose quantizable weights are rounded by
    ops.quant's formulas (quantize, then dequantize): what the quantized model computes."""
    from numformer.model.llama import Llama
    from numformer.ops import quant

    model = Llama.load(run / "best")
    for name in model.quantizable():
        model.params[name][...] = quant.dequantize(quant.quantize(model.params[name], fmt))
    model.save(folder, tokenizer=model.tokenizer.to_json())
    return folder


def test_a_llama_with_quantize_shows_the_rounded_weights(trained_llama_run, tmp_path):
    pages = {}
    for fmt in ("none", "int8", "bf16"):
        pages[fmt] = tmp_path / f"q-{fmt}.html"
        r = cli(["explore", trained_llama_run, "--prompt", "ROMEO:\nBut soft", "--out", pages[fmt], "--quantize", fmt],
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        pages[fmt] = embedded(pages[fmt].read_text(encoding="utf-8"))
    for fmt in ("int8", "bf16"):
        ck = rounded_llama(trained_llama_run, tmp_path / f"rounded-{fmt}", fmt)
        out = tmp_path / f"r-{fmt}.html"
        assert cli(["explore", ck, "--prompt", "ROMEO:\nBut soft", "--out", out], cwd=tmp_path).returncode == 0
        q, rounded = pages[fmt], embedded(out.read_text(encoding="utf-8"))
        assert f"--quantize {fmt}" in q["notice"]
        np.testing.assert_allclose(np.array(q["attention"]), np.array(rounded["attention"]), rtol=0, atol=2e-6)
        np.testing.assert_allclose(np.array(q["logits"]["values"]), np.array(rounded["logits"]["values"]),
                                   rtol=0, atol=5e-5)
        # and not the float32 weights' numbers
        assert np.abs(np.array(q["logits"]["values"]) - np.array(pages["none"]["logits"]["values"])).max() > 1e-4


def test_an_imported_llama_gguf_file_and_its_converted_checkpoint(tmp_path):
    """A GGUF file (Q4_1 weights, a byte-level BPE tokenizer), read as it is (--quantize keep),
    dequantized, and converted with `numformer convert --from_gguf`: three pages of one model."""
    from tests.interop.gguf_files import write_llama_gguf

    path = write_llama_gguf(tmp_path / "m.gguf", fmt="Q4_1", context=64, weight_std=0.3, n_head=4, n_kv_head=2)
    assert cli(["convert", "--from_gguf", path, "--out", tmp_path / "ck"], cwd=tmp_path).returncode == 0
    pages = []
    for source, quantize in [(path, "keep"), (path, "none"), (tmp_path / "ck", "none")]:
        out = tmp_path / f"{len(pages)}.html"
        r = cli(["explore", source, "--prompt", "the cat sat", "--out", out, "--quantize", quantize], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        pages.append(embedded(out.read_text(encoding="utf-8")))
    first = pages[0]
    assert first["model"]["family"] == "llama" and first["kv_heads"] == [0, 0, 1, 1]
    assert len(first["attention"]) == 2 and len(first["attention"][0]) == 4
    assert "".join(first["tokens"]) == "the cat sat"
    for d in pages[1:]:
        assert d["token_ids"] == first["token_ids"]
        np.testing.assert_allclose(np.array(d["attention"]), np.array(first["attention"]), rtol=0, atol=2e-6)
