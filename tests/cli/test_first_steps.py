"""What a new user trips over, second pass (issue 24's command-line items): one way to name a
checkpoint, hints for nanoGPT and Hugging Face habits, a FIFO as --prompt_file, `embed --file`
and stdin, and public words without internal ones. Items 2, 3 and 6 (the first ETA, the notes on
a short BPE vocabulary and on overfitting, train's paths that are not UTF-8) are training's: they
are in tests/training/test_session.py."""

import ast
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

from numformer import cli
from tests.helpers import run_cli, run_numformer, stderr_line as one_line, make_lab, make_sentence_folder

ROOT = Path(__file__).resolve().parents[2]


def numformer(args, cwd, **kw):
    """The command in a child process, its output as bytes."""
    return run_numformer(args, cwd, text=False, timeout=120, **kw)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("firststeps"))





# ------------------------------------------------------------- 1. one way to name the checkpoint

SAMPLE = ("--max_new_tokens", "12", "--temperature", "0", "--prompt", "the ")


def test_sample_takes_the_checkpoint_as_a_positional_or_as_out_dir(lab, capsys):
    code, by_flag, err = run_cli(capsys, "sample", "--out_dir", lab / "run", *SAMPLE)
    assert code == 0, err
    code, by_position, err = run_cli(capsys, "sample", lab / "run", *SAMPLE)
    assert code == 0, err
    assert by_position == by_flag and by_flag.startswith("the ") and len(by_flag) > len("the \n")


def test_eval_takes_the_checkpoint_as_a_positional_or_as_out_dir(lab, capsys):
    data = ("--data", lab / "corpus.txt", "--json")
    code, by_position, err = run_cli(capsys, "eval", lab / "run", *data)
    assert code == 0, err
    code, by_flag, err = run_cli(capsys, "eval", "--out_dir", lab / "run", *data)
    assert code == 0, err
    assert json.loads(by_flag) == json.loads(by_position)
    assert json.loads(by_flag)["tokens"] > 1000


@pytest.mark.parametrize("command, rest", [("sample", SAMPLE), ("eval", ("--data", "corpus.txt"))])
def test_both_forms_naming_different_folders_is_one_usage_line(lab, tmp_path, capsys, command, rest):
    rest = [str(lab / r) if r == "corpus.txt" else r for r in rest]
    code, out, err = run_cli(capsys, command, lab / "run", "--out_dir", tmp_path / "other", *rest)
    assert code == 2 and out == ""
    line = one_line(err, 2, "--out_dir", "OUT_DIR_OR_CHECKPOINT", str(tmp_path / "other"), str(lab / "run"))
    assert line.startswith(f"numformer {command}: error:")
    # the same folder spelled twice is one folder
    code, out, err = run_cli(capsys, command, f"{lab / 'run'}/", "--out_dir", lab / "run", *rest)
    assert code == 0, err


def test_help_shows_both_forms():
    for name in ("sample", "eval"):
        text = cli.command_parser(name).format_help()
        assert "OUT_DIR_OR_CHECKPOINT" in text and "--out_dir" in text, name


# ------------------------------------------------------------- 4. hints for other tools' habits


@pytest.mark.parametrize("argv, words", [
    (["--device", "cpu"], ("--device", "CPU")),
    (["--device=cuda"], ("--device", "CPU")),
    (["--compile", "True"], ("--compile", "compile")),
    (["--compile=False"], ("--compile", "compile")),
])
def test_device_and_compile_get_a_hint(lab, tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--out_dir", str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    line = one_line(capsys.readouterr().err, 2, *words)
    assert "unrecognized arguments" in line and "runs on the CPU" in line and "no compile step" in line
    assert not (tmp_path / "o").exists()


def test_an_unknown_flag_without_a_habit_gets_no_hint(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sample", "--colour", "red"])
    line = one_line(capsys.readouterr().err, 2, "--colour")
    assert "CPU" not in line


HUB_CASES = [
    (["convert", "--from_hf", "gpt2", "--out", "x"], "gpt2", "AutoModelForCausalLM"),
    (["convert", "--from_hf", "Qwen/Qwen2.5-0.5B", "--out", "x"], "Qwen/Qwen2.5-0.5B", "AutoModelForCausalLM"),
    (["train", "--init_from", "gpt2-medium", "--out_dir", "o"], "gpt2-medium", "AutoModelForCausalLM"),
    (["train", "--init_from", "openai-community/gpt2", "--out_dir", "o"], "openai-community/gpt2", "AutoModelForCausalLM"),
    (["train", "--init_from", "meta-llama/Llama-3.2-1B", "--out_dir", "o"], "meta-llama/Llama-3.2-1B",
     "AutoModelForCausalLM"),
    (["embed", "--model", "sentence-transformers/all-MiniLM-L6-v2", "a text"],
     "sentence-transformers/all-MiniLM-L6-v2", "SentenceTransformer"),
    (["similarity", "--model", "BAAI/bge-small-en", "a", "b"], "BAAI/bge-small-en", "SentenceTransformer"),
]


@pytest.mark.parametrize("argv, name, loader", HUB_CASES)
def test_a_hub_name_says_hubs_are_not_reached(tmp_path, capsys, monkeypatch, argv, name, loader):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code != 0
    line = one_line(err, code, name, "save_pretrained", loader)
    assert "no hub" in line.lower() or "hub is" in line.lower() or "not reached" in line, line
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["convert", "--from_hf", "./gpt2", "--out", "x"],
                                  ["train", "--init_from", "/nowhere/gpt2", "--out_dir", "o"]])
def test_a_path_that_is_not_a_hub_name_is_only_missing(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    line = one_line(err, code, "no such folder")
    assert "save_pretrained" not in line


def test_a_local_folder_named_like_a_hub_model_is_used(lab, tmp_path, capsys, monkeypatch):
    import shutil

    shutil.copytree(lab / "run" / "latest", tmp_path / "gpt2")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "sample", "gpt2", "--max_new_tokens", "3")
    assert code == 0, err


# ------------------------------------------------------------- 5. a FIFO as --prompt_file


@pytest.mark.parametrize("command", ["sample", "explore"])
def test_a_fifo_prompt_file_is_named_and_never_read(lab, tmp_path, command):
    fifo = tmp_path / "prompt"
    os.mkfifo(fifo)
    r = numformer([command, str(lab / "run"), "--prompt_file", str(fifo), "--max_new_tokens", "3"]
                  if command == "sample" else
                  [command, str(lab / "run"), "--prompt_file", str(fifo), "--out", str(tmp_path / "e.html")],
                  tmp_path)
    line = one_line(r.stderr.decode(), r.returncode, str(fifo), "not a regular file", "FIFO")
    assert r.returncode != 0 and "not found" not in line


def test_a_missing_prompt_file_is_still_not_found(lab, tmp_path, capsys):
    code, out, err = run_cli(capsys, "sample", lab / "run", "--prompt_file", tmp_path / "nope.txt")
    assert code == 1
    one_line(err, code, "nope.txt", "not found")


def test_a_folder_as_prompt_file(lab, tmp_path, capsys):
    code, out, err = run_cli(capsys, "sample", lab / "run", "--prompt_file", tmp_path)
    one_line(err, code, str(tmp_path), "not a regular file", "folder")


# ------------------------------------------------------------- 7. embed --file and stdin


@pytest.fixture(scope="module")
def sentence_model(tmp_path_factory):
    return make_sentence_folder(tmp_path_factory.mktemp("st") / "model")


def embed_json(capsys, monkeypatch, sentence_model, *argv, stdin=None, tty=False):
    if stdin is not None or tty:
        stream = io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8")
        stream.isatty = lambda: tty
        monkeypatch.setattr(sys, "stdin", stream)
    code, out, err = run_cli(capsys, "embed", "--model", sentence_model, "--json", *argv)
    return code, (json.loads(out) if code == 0 else None), err


def test_embed_reads_one_text_a_line_from_a_file(sentence_model, tmp_path, capsys, monkeypatch):
    file = tmp_path / "texts.txt"
    file.write_bytes("a b\n\nb c a\r\n   \nc\n".encode())
    code, from_args, err = embed_json(capsys, monkeypatch, sentence_model, "a b", "b c a", "c")
    assert code == 0, err
    code, from_file, err = embed_json(capsys, monkeypatch, sentence_model, "--file", file)
    assert code == 0, err
    assert [d["text"] for d in from_file] == ["a b", "b c a", "c"]      # blank lines skipped, \r\n read as \n
    assert from_file == from_args


def test_embed_reads_stdin_as_dash_or_when_piped(sentence_model, capsys, monkeypatch):
    code, want, err = embed_json(capsys, monkeypatch, sentence_model, "a", "b c")
    assert code == 0, err
    code, dash, err = embed_json(capsys, monkeypatch, sentence_model, "-", stdin=b"a\nb c\n")
    assert code == 0, err
    code, piped, err = embed_json(capsys, monkeypatch, sentence_model, stdin=b"a\n\nb c")
    assert code == 0, err
    assert dash == want and piped == want
    code, mixed, err = embed_json(capsys, monkeypatch, sentence_model, "c", "-", stdin=b"a\nb c\n")
    assert [d["text"] for d in mixed] == ["c", "a", "b c"]


def test_embed_human_output_is_unchanged_by_file(sentence_model, tmp_path, capsys):
    file = tmp_path / "t.txt"
    file.write_text("a b\nc\n", encoding="utf-8")
    code, by_args, err = run_cli(capsys, "embed", "--model", sentence_model, "a b", "c")
    assert code == 0, err
    code, by_file, err = run_cli(capsys, "embed", "--model", sentence_model, "--file", file)
    assert code == 0 and by_file == by_args and len(by_args.splitlines()) == 2, err


def test_embed_bad_inputs_are_one_line(sentence_model, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a\nb \xff c\n")
    code, _, err = embed_json(capsys, monkeypatch, sentence_model, "--file", bad)
    assert code == 1
    one_line(err, 1, str(bad), "UTF-8", "line 2")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    code, _, err = embed_json(capsys, monkeypatch, sentence_model, "--file", blank)
    assert code != 0
    one_line(err, code, str(blank), "no text")
    code, _, err = embed_json(capsys, monkeypatch, sentence_model, "--file", tmp_path / "missing.txt")
    one_line(err, code, "missing.txt", "no such file")
    code, _, err = embed_json(capsys, monkeypatch, sentence_model, "--file", tmp_path)
    one_line(err, code, "folder")
    code, _, err = embed_json(capsys, monkeypatch, sentence_model, tty=True)
    assert code == 2
    one_line(err, 2, "--file", "stdin")
    code, _, err = embed_json(capsys, monkeypatch, sentence_model, "-", stdin=b"a\xff\n")
    assert code == 1
    one_line(err, 1, "stdin", "UTF-8")


# ------------------------------------------------------------- 8. public words


def test_explain_json_has_article_printed_beside_seed_printed(capsys):
    code, out, err = run_cli(capsys, "explain", "--json")
    assert code == 0, err
    objs = json.loads(out)
    assert len(objs) == 17                  # the article's thirteen, then four it does not have
    for obj in objs:
        assert "seed_printed" in obj and obj["article_printed"] == obj["seed_printed"], obj["name"]
    assert {o["name"]: o for o in objs}["softmax"]["article_printed"]["softmax"] == [0.090, 0.245, 0.665]


def test_benchmarks_print_no_issue_numbers():
    found = []
    for file in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.search(r"\b[Ii]ssue \d+", node.value):
                    found.append((file.name, node.lineno, node.value[:60]))
    assert not found, found
