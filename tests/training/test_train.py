"""`numformer train` and `numformer sample`: learning, bit-exact resume, and bad input."""

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from numformer.checkpoint import load_checkpoint
from numformer.errors import NumformerError
from numformer.training import TrainConfig, run

SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, eval_interval=10, eval_iters=2,
             warmup_iters=5, lr_decay_iters=60, sample_tokens=0)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "shall", "not", "be", "my", "lord", "good", "night", "sweet", "prince"]
    lines = []
    for i in range(600):
        speaker = ["HAMLET", "OPHELIA", "KING"][i % 3]
        lines.append(f"{speaker}:\n" + " ".join(rng.choice(words, size=8)) + ".\n")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def env(tmp_path):
    e = dict(os.environ)
    e["NUMFORMER_CACHE"] = str(tmp_path / "cache")
    return e


def cli(args, tmp_path, **kw):
    return subprocess.run([sys.executable, "-m", "numformer", *args], capture_output=True, text=True,
                          env=env(tmp_path), cwd=tmp_path, timeout=300, **kw)


def cfg_for(corpus, out_dir, **kw):
    d = dict(SMALL, data=str(corpus), out_dir=str(out_dir))
    d.update(kw)
    return TrainConfig.of(**d)


def unigram_entropy(text):
    counts = np.array(list(Counter(text).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_short_run_learns_more_than_character_frequencies(corpus, tmp_path):
    """A model that predicted each character from its frequency alone would score the unigram
    entropy H1 of the text. After 150 steps on this small corpus of repeated words the model must
    use context, so its val loss has to be clearly below H1 (and the untrained model sits at about
    ln V, above H1)."""
    text = corpus.read_text(encoding="utf-8")
    h1 = unigram_entropy(text)
    out = tmp_path / "out"
    summary = run(cfg_for(corpus, out, max_iters=150, lr_decay_iters=150, learning_rate=3e-3),
                  cache_dir=tmp_path / "cache", out=open(os.devnull, "w"))
    assert summary["val_loss"] < h1 - 0.5, (summary["val_loss"], h1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 150
    assert rows[0]["val_loss"] > h1          # the untrained model knows less than the frequencies
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "latest" / "model.safetensors").is_file() and (out / "best" / "config.json").is_file()


def weights(path):
    return load_checkpoint(path).model


class StopAfter:
    """A single-process world whose Ctrl-C flag goes up after n steps, as the SIGINT handler of
    `numformer train` raises it."""

    def __new__(cls, n):
        from numformer.parallel.mpi import SingleProcess

        class World(SingleProcess):
            calls = 0

            def stop_requested(self):
                World.calls += 1
                return World.calls >= n

        return World()


def assert_same_checkpoints(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].tobytes() == wb[name].tobytes(), name
    oa, ob = load_checkpoint(a).optimizer, load_checkpoint(b).optimizer
    assert oa["m"].tobytes() == ob["m"].tobytes() and oa["v"].tobytes() == ob["v"].tobytes()


def test_resume_after_an_interruption_is_bit_identical(corpus, tmp_path):
    kw = dict(max_iters=40, dropout=0.1)
    quiet = dict(cache_dir=tmp_path / "cache", plot=False, out=open(os.devnull, "w"))
    run(cfg_for(corpus, tmp_path / "a", **kw), **quiet)

    # run b: Ctrl-C during step 23 (between two evaluations); it stops after that step
    s = run(cfg_for(corpus, tmp_path / "b", **kw), world=StopAfter(23), **quiet)
    assert s["interrupted"] and s["step"] == 23
    assert load_checkpoint(tmp_path / "b" / "latest").config["train"]["iter_num"] == 23
    run(cfg_for(corpus, tmp_path / "b", **kw), resume=True, **quiet)
    assert_same_checkpoints(tmp_path / "a" / "latest", tmp_path / "b" / "latest")


def test_an_interrupt_inside_a_step_saves_nothing_and_resume_is_still_exact(corpus, tmp_path, monkeypatch):
    """A KeyboardInterrupt in the middle of a step (the second Ctrl-C) leaves half-updated state:
    it must not be saved; the last evaluation's checkpoint stays and resuming from it is exact."""
    from numformer.training.loop import ThisProcess

    kw = dict(max_iters=30)
    quiet = dict(cache_dir=tmp_path / "cache", plot=False, out=open(os.devnull, "w"))
    run(cfg_for(corpus, tmp_path / "a", **kw), **quiet)

    real = ThisProcess.loss_and_grad              # the gradient of a training step (not an evaluation)
    calls = {"n": 0}

    def interrupted(self, model, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 16:                 # inside step 15
            model.params.flat[:5] += 1.0     # a half-done update
            raise KeyboardInterrupt
        return real(self, model, *args, **kw)

    monkeypatch.setattr(ThisProcess, "loss_and_grad", interrupted)
    s = run(cfg_for(corpus, tmp_path / "b", **kw), **quiet)
    assert s["interrupted"]
    assert load_checkpoint(tmp_path / "b" / "latest").config["train"]["iter_num"] == 10
    monkeypatch.setattr(ThisProcess, "loss_and_grad", real)
    run(cfg_for(corpus, tmp_path / "b", **kw), resume=True, **quiet)
    assert_same_checkpoints(tmp_path / "a" / "latest", tmp_path / "b" / "latest")


def test_resume_takes_the_saved_settings_and_the_flags_given(trained, tmp_path, corpus):
    """`--resume` alone continues the run as it was configured (here: its data, model and
    eval_interval); a flag given on the command line (max_iters) overrides; a model flag that
    differs is refused."""
    r = cli(["train", "--out_dir", "run", "--resume", "--max_iters", "6", "--no_plot"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "step 6: train loss" in r.stdout and "resuming at step 4" in r.stdout
    cfg = load_checkpoint(trained / "latest").config["train"]["config"]
    assert cfg["max_iters"] == 6 and cfg["n_embd"] == 16 and cfg["eval_interval"] == 2
    assert_one_line_error(cli(["train", "--out_dir", "run", "--resume", "--n_embd", "32"], tmp_path), "n_embd")


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    from numformer.training.loop import ThisProcess

    real = ThisProcess.loss_and_grad              # the gradient of a training step (not an evaluation)
    calls = {"n": 0}

    def loss_and_grad(self, model, *args, **kw):
        loss = real(self, model, *args, **kw)
        calls["n"] += 1
        return float("nan") if calls["n"] == 15 else loss

    monkeypatch.setattr(ThisProcess, "loss_and_grad", loss_and_grad)
    out = tmp_path / "out"
    with pytest.raises(NumformerError, match="loss became nan at step 14") as e:
        run(cfg_for(corpus, out, max_iters=40), cache_dir=tmp_path / "cache", plot=False, out=open(os.devnull, "w"))
    assert "\n" not in str(e.value)
    ck = load_checkpoint(out / "latest")
    assert ck.config["train"]["iter_num"] == 10
    assert all(np.isfinite(t).all() for t in ck.model.values())


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("usage:")), r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def test_bad_corpus_files_give_one_line_errors_and_stay_untouched(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n", encoding="utf-8")
    before = {p: sha(p) for p in (empty, binary, short)}
    base = ["train", "--max_iters", "1", "--block_size", "64"]
    assert_one_line_error(cli([*base, "--data", str(tmp_path / "missing.txt")], tmp_path), "missing.txt")
    assert_one_line_error(cli([*base, "--data", str(empty)], tmp_path), "empty.txt")
    assert_one_line_error(cli([*base, "--data", str(binary)], tmp_path), "latin1.txt", "UTF-8")
    assert_one_line_error(cli([*base, "--data", str(short)], tmp_path), "block_size")
    assert {p: sha(p) for p in before} == before


def test_bad_flags_and_config_files(tmp_path, corpus):
    assert_one_line_error(cli(["train", "--n_layer", "two"], tmp_path), "n_layer")
    assert_one_line_error(cli(["train", "--pos_encoding", "rotary"], tmp_path), "pos_encoding")
    assert_one_line_error(cli(["train", "--n_embd", "30", "--n_head", "4", "--data", str(corpus)], tmp_path),
                          "divisible")
    toml = tmp_path / "cfg.toml"
    toml.write_text('n_layer = 2\nlearning_rte = 0.1\n')
    assert_one_line_error(cli(["train", str(toml)], tmp_path), "learning_rte")
    toml.write_text('n_layer = "2"\n')
    assert_one_line_error(cli(["train", str(toml)], tmp_path), "n_layer", "int")


def test_toml_config_is_read_and_flags_override_it(tmp_path, corpus):
    toml = tmp_path / "cfg.toml"
    toml.write_text(f'data = "{corpus}"\nn_layer = 1\nn_embd = 16\nn_head = 2\nblock_size = 16\nbatch_size = 4\n'
                    f'max_iters = 3\neval_interval = 3\neval_iters = 1\nsample_tokens = 0\nlearning_rate = 0.01\n')
    r = cli(["train", str(toml), "--max_iters", "6", "--out_dir", "o", "--no_plot"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "step 6: train loss" in r.stdout
    cfg = load_checkpoint(tmp_path / "o" / "latest").config["train"]["config"]
    assert cfg["n_layer"] == 1 and cfg["max_iters"] == 6 and cfg["learning_rate"] == 0.01


@pytest.fixture()
def trained(tmp_path, corpus):
    r = cli(["train", "--data", str(corpus), "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
             "--block_size", "16", "--batch_size", "4", "--max_iters", "4", "--eval_interval", "2",
             "--eval_iters", "1", "--sample_tokens", "20", "--out_dir", "run", "--no_plot"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "step 0: train loss" in r.stdout and "step 4: train loss" in r.stdout and "sample:" in r.stdout
    return tmp_path / "run"


def test_sample_streams_text_and_rejects_unknown_characters(trained, tmp_path):
    r = cli(["sample", "--out_dir", str(trained), "--prompt", "KING:", "--max_new_tokens", "30", "--seed", "1"],
            tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("KING:") and len(r.stdout) >= len("KING:") + 20
    again = cli(["sample", "--out_dir", str(trained), "--prompt", "KING:", "--max_new_tokens", "30", "--seed", "1"],
                tmp_path)
    assert again.stdout == r.stdout
    assert_one_line_error(cli(["sample", "--out_dir", str(trained), "--prompt", "KING\u00e9"], tmp_path), "é")
    assert_one_line_error(cli(["sample", "--out_dir", str(tmp_path / "nowhere")], tmp_path), "nowhere")


def test_rerunning_into_a_trained_out_dir_does_not_overwrite_it(trained, tmp_path, corpus):
    before = sha(trained / "latest" / "model.safetensors")
    r = cli(["train", "--data", str(corpus), "--out_dir", "run", "--max_iters", "2"], tmp_path)
    assert_one_line_error(r, "--resume")
    assert sha(trained / "latest" / "model.safetensors") == before


def test_damaged_checkpoints_give_one_line_errors(trained, tmp_path):
    import shutil

    def copy(name):
        dst = tmp_path / name
        shutil.copytree(trained / "latest", dst)
        return dst

    truncated = copy("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli(["sample", "--out_dir", str(truncated)], tmp_path), "model.safetensors")

    tampered = copy("tampered")
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(data))
    assert_one_line_error(cli(["sample", "--out_dir", str(tampered)], tmp_path), "model.safetensors")

    mismatch = copy("mismatch")
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["model"]["n_embd"] = 32
    (mismatch / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(cli(["sample", "--out_dir", str(mismatch)], tmp_path), "shape")

    badjson = copy("badjson")
    (badjson / "config.json").write_text("{not json")
    assert_one_line_error(cli(["sample", "--out_dir", str(badjson)], tmp_path), "config.json")

    pickle = tmp_path / "ckpt.pt"
    pickle.write_bytes(b"\x80\x04not really a pickle")
    assert_one_line_error(cli(["sample", "--out_dir", str(pickle)], tmp_path), "pickle")


def test_hand_edited_config_values_give_one_line_errors(trained, tmp_path):
    import shutil

    for name, edit in [("dtype", lambda c: c.__setitem__("dtype", "float16")),
                       ("bytes", lambda c: c["_numformer"]["files"]["model.safetensors"].__setitem__("bytes", "12")),
                       ("train", lambda c: c.__setitem__("train", 7))]:
        dst = tmp_path / f"edited-{name}"
        shutil.copytree(trained, dst)
        path = dst / "latest" / "config.json"
        cfg = json.loads(path.read_text())
        edit(cfg)
        path.write_text(json.dumps(cfg))
        shutil.rmtree(dst / "best")
        cmd = ["train", "--out_dir", str(dst), "--resume"] if name == "train" else ["sample", "--out_dir", str(dst)]
        assert_one_line_error(cli(cmd, tmp_path), "config.json" if name != "bytes" else "model.safetensors")


def test_a_checkpoint_set_aside_by_a_crash_is_not_replaced_by_a_fresh_run(trained, tmp_path, corpus):
    """A save killed between its two renames leaves latest/ missing and the complete old one
    aside; a fresh run must neither start over it nor delete it."""
    aside = trained / ".latest.numformer-old-test"
    (trained / "latest").rename(aside)
    import shutil

    shutil.rmtree(trained / "best")
    r = cli(["train", "--data", str(corpus), "--out_dir", "run", "--max_iters", "2"], tmp_path)
    assert_one_line_error(r, "--resume")
    assert (aside / "model.safetensors").is_file()


def test_a_users_own_metrics_file_in_out_dir_is_not_deleted(tmp_path, corpus):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"my": "own data"}\n')
    r = cli(["train", "--data", str(corpus), "--out_dir", str(out), "--max_iters", "1"], tmp_path)
    assert_one_line_error(r, "metrics.jsonl")
    assert (out / "metrics.jsonl").read_text() == '{"my": "own data"}\n'


# ------------------------------------------------------------------ nothing of the user's is lost

TINY = ["--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--block_size", "16", "--batch_size", "4",
        "--eval_iters", "1", "--sample_tokens", "0"]


def png_text(path):
    """The PNG's text chunks, read by Pillow (a dependency of matplotlib)."""
    from PIL import Image

    with Image.open(path) as im:
        return dict(im.text)


def test_a_users_loss_png_in_out_dir_is_not_overwritten(tmp_path, corpus):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "loss.png").write_text("my corpus, unluckily named")
    r = cli(["train", "--data", str(corpus), "--out_dir", str(out), "--max_iters", "2", *TINY], tmp_path)
    assert_one_line_error(r, "loss.png", "--no_plot")
    assert (out / "loss.png").read_text() == "my corpus, unluckily named"
    assert sorted(os.listdir(out)) == ["loss.png"]
    # with --no_plot the run goes ahead and leaves it alone
    r = cli(["train", "--data", str(corpus), "--out_dir", str(out), "--max_iters", "2", "--no_plot", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "loss.png").read_text() == "my corpus, unluckily named"


def test_files_named_like_the_old_temporary_files_survive_a_run(tmp_path, corpus):
    """numformer's temporary files have names of their own: a user's metrics.jsonl.tmp and
    loss.tmp.png are neither overwritten nor renamed away."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl.tmp").write_text("mine")
    (out / "loss.tmp.png").write_text("mine too")
    run(cfg_for(corpus, out, max_iters=20), cache_dir=tmp_path / "cache", out=open(os.devnull, "w"))
    assert (out / "metrics.jsonl.tmp").read_text() == "mine"
    assert (out / "loss.tmp.png").read_text() == "mine too"
    assert png_text(out / "loss.png").get("numformer")           # the plot marks itself as numformer's
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 10, 20]
    assert not [n for n in os.listdir(out) if "numformer-" in n]


def test_a_resumed_run_replaces_its_own_plot(tmp_path, corpus):
    out = tmp_path / "out"
    quiet = dict(cache_dir=tmp_path / "cache", out=open(os.devnull, "w"))
    run(cfg_for(corpus, out, max_iters=10), **quiet)
    first = (out / "loss.png").read_bytes()
    run(cfg_for(corpus, out, max_iters=20), resume=True, **quiet)
    assert (out / "loss.png").read_bytes() != first
    assert png_text(out / "loss.png").get("numformer")


def test_an_empty_out_dir_is_an_error_and_the_current_folder_is_untouched(tmp_path, corpus):
    (tmp_path / "loss.png").write_text("mine")
    before = sorted(os.listdir(tmp_path))
    assert_one_line_error(cli(["train", "--data", str(corpus), "--out_dir", "", "--max_iters", "2", *TINY],
                              tmp_path), "out_dir")
    assert_one_line_error(cli(["train", "--data", "", "--max_iters", "2", *TINY], tmp_path), "data")
    toml = tmp_path / "cfg.toml"
    toml.write_text('out_dir = ""\n')
    assert_one_line_error(cli(["train", str(toml), "--data", str(corpus), "--max_iters", "2", *TINY], tmp_path),
                          "out_dir")
    toml.unlink()
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "loss.png").read_text() == "mine"
    with pytest.raises(NumformerError, match="out_dir is empty"):
        run(cfg_for(corpus, ""), cache_dir=tmp_path / "cache", out=open(os.devnull, "w"))


def test_a_second_run_on_the_same_out_dir_is_refused_while_the_first_runs(tmp_path, corpus):
    """The first run holds a lock on out_dir: a second run gets one line naming it (pid and host)
    and changes nothing; once the first is killed (SIGKILL, no cleanup) the folder is free."""
    import signal
    import socket
    import time

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "numformer", "train", "--data", str(corpus), "--out_dir", "run",
                              "--max_iters", "100000", "--eval_interval", "5", "--no_plot", *TINY],
                             cwd=tmp_path, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "latest" / "config.json").exists():      # it has trained and saved
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        for extra in ([], ["--overwrite"], ["--resume"]):
            r = cli(["train", "--data", str(corpus), "--out_dir", "run", "--max_iters", "2", *TINY, *extra], tmp_path)
            assert_one_line_error(r, "in use by numformer train", f"pid {first.pid}", socket.gethostname())
        assert first.poll() is None                                # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    r = cli(["train", "--data", str(corpus), "--out_dir", "run", "--max_iters", "2", "--overwrite", "--no_plot",
             *TINY], tmp_path)
    assert r.returncode == 0, r.stderr                             # the lock went with the process
    assert load_checkpoint(out / "latest").config["train"]["iter_num"] == 2


# ----------------------------------------------------------------------------- --arch llama

LLAMA = dict(arch="llama", n_kv_head=1, n_hidden=48)


def test_llama_learns_and_its_resume_after_an_interruption_is_bit_identical(corpus, tmp_path):
    """--arch llama (grouped-query: 2 heads, 1 key/value head; dropout on): an interrupted run
    resumed ends with the bytes of one never interrupted, and it learned something."""
    kw = dict(LLAMA, max_iters=30, dropout=0.1)
    quiet = dict(cache_dir=tmp_path / "cache", plot=False, out=open(os.devnull, "w"))
    summary = run(cfg_for(corpus, tmp_path / "a", **kw), **quiet)
    s = run(cfg_for(corpus, tmp_path / "b", **kw), world=StopAfter(17), **quiet)
    assert s["interrupted"] and s["step"] == 17
    run(cfg_for(corpus, tmp_path / "b", **kw), resume=True, **quiet)
    assert_same_checkpoints(tmp_path / "a" / "latest", tmp_path / "b" / "latest")
    doc = load_checkpoint(tmp_path / "a" / "latest").config
    assert doc["format"] == "numformer-llama" and doc["model"]["n_kv_head"] == 1
    assert doc["train"]["config"]["arch"] == "llama" and "gelu" not in doc["train"]["config"]
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    assert "model.layers.1.self_attn.k_proj.weight" in weights(tmp_path / "a" / "latest")


def test_llama_flags_reach_the_model_and_its_defaults_are_llamas(corpus, tmp_path):
    cfg = cfg_for(corpus, tmp_path / "o", arch="llama")
    m = cfg.model
    assert cfg.arch == "llama" and m.family == "llama"
    assert (m.n_kv_head, m.n_hidden, m.tie_embeddings, m.attention_bias, m.rope_theta) == (2, 256, False, False, 1e4)
    assert cfg.lora_targets == "q_proj,v_proj"
    m = cfg_for(corpus, tmp_path / "o", arch="llama", n_kv_head=1, n_hidden=40, rope_theta=5e5, tie_embeddings=True,
                attention_bias=True).model
    assert (m.n_kv_head, m.n_hidden, m.rope_theta, m.tie_embeddings, m.attention_bias) == (1, 40, 5e5, True, True)
    assert cfg_for(corpus, tmp_path / "o").arch == "gpt2"


def test_llama_bad_flags_are_one_line(tmp_path, corpus):
    base = ["train", "--arch", "llama", "--data", str(corpus), "--max_iters", "1"]
    assert_one_line_error(cli([*base, "--n_head", "4", "--n_embd", "32", "--n_kv_head", "3"], tmp_path),
                          "n_head (4) must be divisible by n_kv_head (3)")
    assert_one_line_error(cli([*base, "--n_head", "4", "--n_embd", "12"], tmp_path), "head size", "even")
    assert_one_line_error(cli([*base, "--gelu", "exact"], tmp_path), "--gelu applies to --arch gpt2")
    assert_one_line_error(cli([*base, "--bias", "false"], tmp_path), "--bias applies to --arch gpt2")
    assert_one_line_error(cli([*base, "--rope_theta", "0"], tmp_path), "rope_theta must be a positive")
    assert_one_line_error(cli([*base, "--n_hidden", "-4"], tmp_path), "n_hidden must be a positive integer")
    assert_one_line_error(cli([*base, "--tie_embeddings", "maybe"], tmp_path), "tie_embeddings")
    assert_one_line_error(cli(["train", "--arch", "falcon"], tmp_path), "arch")
    assert_one_line_error(cli(["train", "--n_kv_head", "2", "--data", str(corpus)], tmp_path),
                          "--n_kv_head applies to --arch llama")


def test_llama_checkpoint_samples_evaluates_explores_and_refuses_a_changed_arch(tmp_path, corpus):
    r = cli(["train", "--arch", "llama", "--data", str(corpus), "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
             "--n_kv_head", "1", "--block_size", "16", "--batch_size", "4", "--max_iters", "4", "--eval_interval", "2",
             "--eval_iters", "1", "--sample_tokens", "20", "--out_dir", "run", "--no_plot"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "llama: 1 layers, 2 heads (1 key/value)" in r.stdout and "sample:" in r.stdout
    r = cli(["sample", "run", "--prompt", "the king", "--max_new_tokens", "30"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("the king"), r.stderr
    r = cli(["eval", "run", "--data", str(corpus), "--json"], tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["tokens"] > 1000, r.stderr
    r = cli(["explore", "run", "--prompt", "the king", "--out", "x.html"], tmp_path)   # tests/explore has the rest
    assert r.returncode == 0 and "2 heads (1 key/value)" in r.stdout, r.stderr
    assert (tmp_path / "x.html").is_file()
    assert_one_line_error(cli(["train", "--out_dir", "run", "--resume", "--arch", "gpt2"], tmp_path),
                          "arch is 'llama'")
    assert_one_line_error(cli(["train", "--out_dir", "run", "--resume", "--n_kv_head", "2"], tmp_path), "n_kv_head")
