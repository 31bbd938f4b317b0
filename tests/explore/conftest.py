"""Fixtures for the explorer's tests: tiny models (GPT and Llama), short training runs, and a
headless Chromium.

The browser is the distribution's Chromium (`apt-get install chromium`; .ci/run installs it),
driven by Playwright for Python with executable_path pointing at it, so no browser is downloaded
at test time. Without it the browser tests fail with a line that says what to install.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numformer import GPT, GPTConfig
from numformer.data.tokenizer import CharTokenizer
from numformer.model.config import LlamaConfig
from numformer.model.llama import Llama

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
        "JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n"
        "<b>&amp;</b> \"quotes\" and 'apostrophes'\t</script>\n")


def tiny_model(*, block_size=32, n_layer=2, n_head=2, n_embd=32, seed=3, **kw):
    """A GPT with a character tokenizer of TEXT, random weights scaled up so that attention and
    predictions are far from uniform."""
    tok = CharTokenizer.from_text(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                    n_embd=n_embd, **kw)
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for name, w in model.params.items():
        if w.ndim == 2:                                   # sharper attention and logits than init
            w[...] = rng.normal(0.0, 0.3, size=w.shape)
    model.eval()
    model.tokenizer = tok
    return model


def tiny_llama(*, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, seed=3, **kw):
    """A Llama (grouped-query attention by default: 4 query heads share 2 key/value heads) with a
    character tokenizer of TEXT, random weights scaled up as tiny_model's."""
    tok = CharTokenizer.from_text(TEXT)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                      n_kv_head=n_kv_head, n_embd=n_embd, **kw)
    model = Llama(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for name, w in model.params.items():
        if w.ndim == 2:
            w[...] = rng.normal(0.0, 0.3, size=w.shape)
        elif name.endswith("bias"):
            w[...] = rng.normal(0.0, 0.3, size=w.shape)
    model.eval()
    model.tokenizer = tok
    return model


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory):
    """A checkpoint folder of tiny_model(), and the model."""
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model = tiny_model()
    model.save(path, tokenizer=model.tokenizer.to_json())
    return path, model


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """`numformer train` for 30 steps of a 2-layer, 32-wide model on a short text: a run folder
    with best/, latest/ and metrics.jsonl."""
    root = tmp_path_factory.mktemp("run")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 40, encoding="utf-8")
    env = dict(os.environ, NUMFORMER_CACHE=str(root / "cache"))
    cmd = [sys.executable, "-m", "numformer", "train", "--data", str(corpus), "--out_dir", str(root / "out"),
           "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32", "--batch_size", "8",
           "--max_iters", "30", "--eval_interval", "10", "--eval_iters", "2", "--warmup_iters", "5",
           "--lr_decay_iters", "30", "--sample_tokens", "0", "--no_plot", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr
    return root / "out"


@pytest.fixture(scope="session")
def trained_llama_run(tmp_path_factory):
    """`numformer train --arch llama` for 6 steps of a 2-layer, 32-wide model whose 4 query heads
    share 2 key/value heads: a run folder with best/, latest/ and metrics.jsonl."""
    root = tmp_path_factory.mktemp("llama-run")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 40, encoding="utf-8")
    env = dict(os.environ, NUMFORMER_CACHE=str(root / "cache"))
    cmd = [sys.executable, "-m", "numformer", "train", "--arch", "llama", "--data", str(corpus),
           "--out_dir", str(root / "out"), "--n_layer", "2", "--n_head", "4", "--n_kv_head", "2", "--n_embd", "32",
           "--block_size", "32", "--batch_size", "4", "--max_iters", "6", "--eval_interval", "3", "--eval_iters", "1",
           "--sample_tokens", "0", "--no_plot", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr
    return root / "out"


def cli(args, cwd, timeout=120):
    """Run `python -m numformer ARGS` in cwd."""
    return subprocess.run([sys.executable, "-m", "numformer", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from the distribution, driven by Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright for Python: pip install -c constraints.txt playwright")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("the browser tests need Chromium from the distribution: apt-get install chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture()
def screenshots(tmp_path):
    """Folder for screenshots: $NUMFORMER_SCREENSHOTS if set, else the test's tmp_path."""
    folder = os.environ.get("NUMFORMER_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path
