"""Bad input and a hostile machine at the command line: one line, non-zero, never a traceback.

--seed -1 in sample, bytes that are not UTF-8 on the command line, an OSError of any command, a
checkpoint whose tokenizer has more characters than the model's vocabulary, and a
sentence-transformers modules.json whose Pooling path is a number or leads out of the model
folder. Training's cases (--seed -1 in train, an iter_num edited to be negative, a read-only
out_dir, a disk that fills during a save) are in tests/training/test_loop.py and test_session.py.
"""

import errno
import json
import subprocess
import sys

import pytest

from numformer import cli
from tests.helpers import assert_one_line, run_numformer, make_lab, make_sentence_folder


def numformer(args, cwd, **kw):
    """The command in a child process, its output as bytes."""
    return run_numformer(args, cwd, text=False, timeout=300, **kw)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return make_lab(tmp_path_factory.mktemp("oneline"))




def test_seed_minus_one_in_sample(lab, tmp_path):
    r = numformer(["sample", "--out_dir", str(lab / "run"), "--seed", "-1", "--max_new_tokens", "3"], tmp_path)
    assert_one_line(r, "--seed", "-1", code=2)


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
