"""Bad input and a hostile machine at the command line: one line, non-zero, never a traceback.

--seed -1 (train and sample), an iter_num edited to be negative, a read-only out_dir, a disk
that fills during a save (simulated: the checkpoint writer raises ENOSPC), bytes that are not
UTF-8 on the command line, a checkpoint whose tokenizer has more characters than the model's
vocabulary, and a sentence-transformers modules.json whose Pooling path is a number or leads out
of the model folder.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from numformer import cli
from numformer.checkpoint import load_checkpoint

from .tiny import TINY, flags, make_lab, make_sentence_folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("oneline"))


def numformer(args, cwd, **kw):
    env = {**os.environ, "NUMFORMER_CACHE": str(Path(cwd) / "cache")}
    return subprocess.run([sys.executable, "-m", "numformer", *args], capture_output=True, cwd=cwd, env=env,
                          timeout=300, **kw)


def assert_one_line(r, *words, code=None):
    err = r.stderr.decode("utf-8", "replace") if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def copy_run(lab, tmp_path):
    import shutil

    shutil.copytree(lab / "run", tmp_path / "run")
    return tmp_path / "run"


def rewrite_config(folder, change):
    """Edit a checkpoint's config.json as one written before config.json recorded the digest of
    its own settings (which would catch the edit before the value is looked at)."""
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    cfg["_numformer"].pop("config_sha256")
    change(cfg)
    file.write_text(json.dumps(cfg))


def test_seed_minus_one_in_train(lab, tmp_path):
    r = numformer(["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o")), "--seed", "-1"],
                  tmp_path)
    assert_one_line(r, "seed", "-1", code=2)
    assert not (tmp_path / "o").exists()


def test_seed_minus_one_in_sample(lab, tmp_path):
    r = numformer(["sample", "--out_dir", str(lab / "run"), "--seed", "-1", "--max_new_tokens", "3"], tmp_path)
    assert_one_line(r, "--seed", "-1", code=2)


@pytest.mark.parametrize("key, value", [("iter_num", -5), ("iter_num", 2.5), ("opt_step", -1)])
def test_training_state_edited_to_a_bad_step(lab, tmp_path, key, value):
    out = copy_run(lab, tmp_path)
    rewrite_config(out / "latest", lambda c: c["train"].__setitem__(key, value))
    before = (out / "latest" / "config.json").read_bytes()
    r = numformer(["train", "--out_dir", str(out), "--resume", "--max_iters", "20", "--no_plot"], tmp_path)
    assert_one_line(r, key)
    assert (out / "latest" / "config.json").read_bytes() == before


def _in_process_train(lab, tmp_path, capsys, extra=()):
    argv = ["train", *flags(dict(TINY, data=lab / "corpus.txt", out_dir=tmp_path / "o", max_iters=10)),
            "--cache_dir", str(lab / "cache"), "--no_plot", *extra]
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_read_only_out_dir(lab, tmp_path, capsys, monkeypatch):
    """Simulated: this suite may run as root, for whom chmod does not stop a write."""
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if self == tmp_path / "o":
            raise PermissionError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, err = _in_process_train(lab, tmp_path, capsys)
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "Read-only file system" in err and str(tmp_path / "o") in err, err


def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(lab, tmp_path, capsys, monkeypatch):
    import numformer.checkpoint as checkpoint

    real = checkpoint._write_file
    saves = {"n": 0}

    def write(file, data):
        if file.name == "model.safetensors":
            saves["n"] += 1
            if saves["n"] == 3:        # step 0: latest and best; step 5: latest fails
                raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(file, data)

    monkeypatch.setattr(checkpoint, "_write_file", write)
    code, err = _in_process_train(lab, tmp_path, capsys)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("numformer train:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "previous checkpoint" in lines[0], lines[0]
    assert load_checkpoint(tmp_path / "o" / "latest").config["train"]["iter_num"] == 0
    assert not [p for p in (tmp_path / "o").iterdir() if ".numformer-tmp-" in p.name]


def test_an_os_error_of_any_command_is_one_line(tmp_path, capsys, monkeypatch):
    from numformer.commands import explain

    def boom(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/file")

    monkeypatch.setattr(explain, "main", boom)
    assert cli.main(["explain"]) == 1
    err = capsys.readouterr().err
    assert err == "numformer explain: error: /somewhere/file: No space left on device\n"


@pytest.mark.parametrize("argv", [["embed", b"caf\xe9"], ["similarity", b"a", b"\xff\xfe"],
                                  ["sample", "--prompt", b"th\xff"]])
def test_arguments_that_are_not_utf8(lab, tmp_path, argv):
    argv = [a if isinstance(a, bytes) else a.encode() for a in argv]
    if argv[0] == b"sample":
        argv += [b"--out_dir", str(lab / "run").encode()]
    r = subprocess.run([sys.executable.encode(), b"-m", b"numformer", *argv], capture_output=True, cwd=tmp_path,
                       timeout=300)
    assert_one_line(r, "not valid UTF-8", code=2)


def test_a_tokenizer_with_more_characters_than_the_vocabulary(lab, tmp_path):
    from numformer.checkpoint import load_checkpoint as load
    from numformer.model.gpt import GPT

    ck = load(lab / "run" / "latest")
    chars = json.loads(ck.tokenizer)["chars"] + ["\u00e9", "\u00ea"]
    GPT.load(lab / "run" / "latest").save(tmp_path / "ck", tokenizer=json.dumps(
        {"type": "char", "format": 1, "chars": sorted(chars)}))
    r = numformer(["sample", "--out_dir", str(tmp_path / "ck"), "--max_new_tokens", "3"], tmp_path)
    assert_one_line(r, "tokenizer has", "vocabulary")


# ------------------------------------------------------------------------- sentence-transformers


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny BERT sentence-transformers folder (random weights), written with transformers."""
    return make_sentence_folder(tmp_path_factory.mktemp("st") / "model")


def _modules(pool_path):
    return [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": pool_path, "type": "sentence_transformers.models.Pooling"}]


def test_the_tiny_sentence_model_embeds(bert_folder, tmp_path):
    (bert_folder / "modules.json").write_text(json.dumps(_modules("1_Pooling")))
    r = numformer(["embed", "a b", "--model", str(bert_folder)], tmp_path)
    assert r.returncode == 0 and r.stdout.decode().startswith("8 dims"), r.stderr.decode()


@pytest.mark.parametrize("path", [5, None, ["1_Pooling"], "../outside", "/etc", "1_Pooling/../../x"])
def test_pooling_path_that_is_not_a_folder_inside_the_model(bert_folder, tmp_path, path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(bert_folder, folder)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (folder / "modules.json").write_text(json.dumps(_modules(path)))
    r = numformer(["embed", "a b", "--model", str(folder)], tmp_path)
    assert_one_line(r, "modules.json", "Pooling")
