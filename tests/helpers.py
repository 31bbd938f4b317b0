"""What tests in several files share: one_line, the check that an error is reported in one line;
the text the random GPT-2 folders' tokenizer is trained on (the folders themselves come from
numformer.reference.gpt2_folder, which the README's walk-through uses too); the small
checkpoints the checkpoint tests write and compare; and the tiny trained run that several
command-line and training tests start from (a word-salad corpus and ten steps of a one-layer GPT).

Fixtures that every test can use are in tests/conftest.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from numformer import cli
from numformer.checkpoint import save_checkpoint
from numformer.reference.gpt2_folder import make_gpt2_folder
from numformer.training import run

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 30 + \
       "Naïve café — 我爱 numbers: 3.14159, 2718; tabs\tand  double  spaces.\n"


DEEP = 200_000    # how deep crafted JSON and TOML nest: far past Python's recursion limit


def one_line(excinfo) -> str:
    """The message of a pytest.raises excinfo, checked to be one non-empty line."""
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- small checkpoints


def small_model(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal(7 * 5 + 5 * 3 + 3).astype(dtype)
    return {  # views into one flat buffer, as the GPT's parameters are
        "transformer.wte.weight": flat[:35].reshape(7, 5),
        "transformer.h.0.mlp.c_fc.weight": flat[35:50].reshape(5, 3),
        "transformer.h.0.mlp.c_fc.bias": flat[50:53],
    }


def save_small(path, seed=0, dtype=np.float32, optimizer=True, **config):
    model = small_model(seed, dtype)
    opt = {"m": np.full(53, 0.5, dtype), "v": np.full(53, 0.25, dtype)} if optimizer else None
    cfg = {"model": {"n_layer": 1}, "step": seed, **config}
    save_checkpoint(path, model=model, config=cfg, tokenizer='{"type": "char"}', optimizer=opt)
    return model, opt, cfg


def leftovers(folder):
    return [n for n in os.listdir(folder) if "numformer-tmp" in n or "numformer-old" in n]


def assert_model_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])


# ----------------------------------------------------------------------------- a tiny trained run


TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, eval_interval=5, eval_iters=1,
            warmup_iters=2, sample_tokens=0)


def make_lab(root):
    """root/corpus.txt, root/run (a finished 10-step run) and root/cache; returns root."""
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "shall", "not", "be", "my", "lord"]
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, size=8)) for _ in range(400)) + "\n")
    run(dict(TINY, max_iters=10, data=str(root / "corpus.txt"), out_dir=str(root / "run")),
        cache_dir=root / "cache", plot=False, out=open(os.devnull, "w"))
    return root


def make_sentence_folder(folder):
    """A tiny BERT sentence-transformers folder (random weights, a 7-word vocabulary: a, b, c and
    BERT's specials), written with transformers; returns folder."""
    import json

    import pytest

    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=32)).save_pretrained(folder, safe_serialization=True)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


def flags(d):
    return [x for k, v in d.items() for x in (f"--{k}", str(v))]


# ----------------------------------------------------------------------------- the command line


def run_numformer(args, cwd, env=None, *, text=True, timeout=300, **kw):
    """`python -m numformer ARGS` in a child process, in cwd, with a token cache of its own
    (cwd/cache); arguments that are bytes (not UTF-8 on purpose) are passed as they are."""
    e = {**os.environ, "NUMFORMER_CACHE": str(Path(cwd) / "cache"), **(env or {})}
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run([sys.executable, "-m", "numformer", *argv], capture_output=True, text=text, cwd=cwd,
                          env=e, timeout=timeout, **kw)


def assert_one_line(r, *words, code=None):
    """The one error line of a finished child (run_numformer): non-zero exit (`code` if given), no
    traceback, one line holding every one of `words`."""
    err = r.stderr.decode("utf-8", "replace") if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def stderr_line(err: str, code=None, *words) -> str:
    """The one error line of a command's stderr, after checking there is exactly one and that it
    holds every one of `words` (`code` is the caller's record of the exit status, not checked)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def run_cli(capsys, *argv):
    """cli.main in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


BLAS_PROBE = """
import sys
from numformer import cli
from numformer.parallel.process import blas_thread_count, limit_blas_threads
assert limit_blas_threads(3) == 3 and blas_thread_count() == 3     # as if OpenBLAS had started 3
rc = cli.main(sys.argv[1:])
print("BLAS", blas_thread_count(), rc)
"""


def blas_after(args, cwd, env):
    """'BLAS <threads> <exit status>' after a command run in a child whose OpenBLAS had 3 threads."""
    clean = {k: "" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    e = {**os.environ, **clean, "NUMFORMER_CACHE": str(Path(cwd) / "cache"), **env}
    r = subprocess.run([sys.executable, "-c", BLAS_PROBE, *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=e, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- fine-tuning runs

FINETUNE = dict(batch_size=4, max_iters=6, eval_interval=3, eval_iters=2, warmup_iters=0, learning_rate=3e-3,
                min_lr=3e-4, lr_decay_iters=6, sample_tokens=0)


def make_finetune_lab(root):
    """root with a corpus and a random GPT-2 folder (gpt2/) to fine-tune from."""
    (root / "corpus.txt").write_text(TEXT * 3, encoding="utf-8")
    make_gpt2_folder(root / "gpt2", TEXT, vocab_size=300, n_layer=2, n_head=2, n_embd=32, n_positions=32)
    return root


def finetune(lab, name, plot=False, **kw):
    """A short fine-tuning run from lab/gpt2 on lab/corpus.txt into lab/name (FINETUNE's settings, then kw)."""
    settings = dict(FINETUNE, data=str(lab / "corpus.txt"), out_dir=str(lab / name), init_from=str(lab / "gpt2"))
    settings.update(kw)
    return run(settings, cache_dir=lab / "cache", plot=plot)
