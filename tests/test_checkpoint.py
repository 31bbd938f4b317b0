"""Checkpoints: exact round trip, atomic replacement, and one clear error for each bad input."""

import builtins
import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from numformer import checkpoint
from numformer.checkpoint import load_checkpoint, read_safetensors, save_checkpoint
from numformer.errors import CheckpointError


def _model(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal(7 * 5 + 5 * 3 + 3).astype(dtype)
    return {  # views into one flat buffer, as the GPT's parameters are
        "transformer.wte.weight": flat[:35].reshape(7, 5),
        "transformer.h.0.mlp.c_fc.weight": flat[35:50].reshape(5, 3),
        "transformer.h.0.mlp.c_fc.bias": flat[50:53],
    }


def _save(path, seed=0, dtype=np.float32, optimizer=True, **config):
    model = _model(seed, dtype)
    opt = {"m": np.full(53, 0.5, dtype), "v": np.full(53, 0.25, dtype)} if optimizer else None
    cfg = {"model": {"n_layer": 1}, "step": seed, **config}
    save_checkpoint(path, model=model, config=cfg, tokenizer='{"type": "char"}', optimizer=opt)
    return model, opt, cfg


def _leftovers(folder):
    return [n for n in os.listdir(folder) if "numformer-tmp" in n or "numformer-old" in n]


def _assert_model_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])


# ----------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, dtype):
    rng_state = np.random.default_rng(123).bit_generator.state  # 128-bit ints must survive JSON
    config = {"rng": rng_state, "best_val_loss": 1.2345678901234567, "note": "中文 ok"}
    model, opt, cfg = _save(tmp_path / "ckpt", dtype=dtype, **config)
    ck = load_checkpoint(tmp_path / "ckpt")
    _assert_model_equal(ck.model, model)
    _assert_model_equal(ck.optimizer, opt)
    assert ck.config == cfg  # without the "_numformer" bookkeeping
    assert ck.tokenizer == '{"type": "char"}'
    gen = np.random.default_rng()
    gen.bit_generator.state = ck.config["rng"]
    assert gen.random() == np.random.default_rng(123).random()
    assert sorted(os.listdir(tmp_path / "ckpt")) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json"
    ]


def test_files_are_plain_safetensors_and_json_readable_elsewhere(tmp_path):
    from safetensors.numpy import load_file

    model, _, _ = _save(tmp_path / "ckpt")
    theirs = load_file(tmp_path / "ckpt" / "model.safetensors")
    _assert_model_equal(theirs, model)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    record = config["_numformer"]["files"]["model.safetensors"]
    data = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_without_optimizer_and_numpy_scalars_in_config(tmp_path):
    _save(tmp_path / "ckpt", optimizer=False, iter_num=np.int64(7), lr=np.float32(0.5))
    ck = load_checkpoint(tmp_path / "ckpt")
    assert ck.optimizer is None
    assert ck.config["iter_num"] == 7 and ck.config["lr"] == 0.5


def test_replacing_a_checkpoint_keeps_only_the_new_one(tmp_path):
    _save(tmp_path / "ckpt", seed=1)
    model, _, _ = _save(tmp_path / "ckpt", seed=2, optimizer=False)
    ck = load_checkpoint(tmp_path / "ckpt")
    _assert_model_equal(ck.model, model)
    assert ck.optimizer is None and ck.config["step"] == 2
    assert not (tmp_path / "ckpt" / "optimizer.safetensors").exists()
    assert os.listdir(tmp_path) == ["ckpt"]


def test_creates_missing_parent_and_accepts_an_empty_folder(tmp_path):
    _save(tmp_path / "out" / "run" / "latest")
    load_checkpoint(tmp_path / "out" / "run" / "latest")
    (tmp_path / "empty").mkdir()
    _save(tmp_path / "empty")
    load_checkpoint(tmp_path / "empty")


# ------------------------------------------------------------------------------------ atomicity


@pytest.mark.parametrize("failing_file", sorted(checkpoint.CHECKPOINT_FILES))
def test_crash_while_writing_keeps_the_old_checkpoint(tmp_path, monkeypatch, failing_file):
    old_model, _, _ = _save(tmp_path / "ckpt", seed=1)
    real_write = checkpoint._write_file

    def half_then_crash(file, data):
        if file.name == failing_file:
            with open(file, "xb") as f:
                f.write(data[: len(data) // 2])
            raise OSError("disk full (simulated)")
        real_write(file, data)

    monkeypatch.setattr(checkpoint, "_write_file", half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path / "ckpt", seed=2)
    ck = load_checkpoint(tmp_path / "ckpt")
    _assert_model_equal(ck.model, old_model)
    assert ck.config["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt"]  # no temp folder left behind


def test_crash_before_any_checkpoint_exists_leaves_nothing(tmp_path, monkeypatch):
    def crash(file, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write_file", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "ckpt")
    assert os.listdir(tmp_path) == []


def test_failed_rename_into_place_restores_the_old_checkpoint(tmp_path, monkeypatch):
    """Where folders cannot trade names in one step, the old one goes aside first."""
    old_model, _, _ = _save(tmp_path / "ckpt", seed=1)
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the first moves the old one aside, the second brings the new in
            raise OSError("rename failed (simulated)")
        real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path / "ckpt", seed=2)
    monkeypatch.undo()
    _assert_model_equal(load_checkpoint(tmp_path / "ckpt").model, old_model)
    assert os.listdir(tmp_path) == ["ckpt"]


HARD_CRASH = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from numformer import checkpoint

    path, point = sys.argv[1], sys.argv[2]
    real_write, real_rename, real_exchange = checkpoint._write_file, os.rename, checkpoint._exchange
    def write(file, data):
        if point == "write" and file.name == "model.safetensors":
            with open(file, "xb") as f:
                f.write(data[:10])
            os._exit(17)  # the process dies: no except, no finally, no cleanup
        real_write(file, data)
    renames = []
    def rename(src, dst):
        renames.append(src)
        if point == "rename" and len(renames) == 2:
            os._exit(17)  # dies after moving the old checkpoint aside
        real_rename(src, dst)
    def exchange(a, b):
        if point == "rename":
            return False          # as where folders cannot trade names: rename twice
        assert real_exchange(a, b), "this file system cannot exchange folders"
        os._exit(17)              # dies after the swap, before deleting the old checkpoint
    checkpoint._write_file, checkpoint.os.rename, checkpoint._exchange = write, rename, exchange
    checkpoint.save_checkpoint(path, model={"w": np.full(4, 2.0)}, config={"step": 2}, tokenizer="null")
    """
)


@pytest.mark.parametrize("point", ["write", "rename", "exchange"])
def test_hard_crash_never_leaves_a_half_written_checkpoint(tmp_path, point):
    old_model, _, _ = _save(tmp_path / "ckpt", seed=1)
    proc = subprocess.run(
        [sys.executable, "-c", HARD_CRASH, str(tmp_path / "ckpt"), point], capture_output=True
    )
    assert proc.returncode == 17, proc.stderr.decode()
    if point == "write":
        _assert_model_equal(load_checkpoint(tmp_path / "ckpt").model, old_model)
    elif point == "exchange":   # the new checkpoint is in; the old one is left under the temporary name
        assert load_checkpoint(tmp_path / "ckpt").config == {"step": 2}
    else:
        # path is momentarily empty; the complete old checkpoint is aside and the error says where
        with pytest.raises(CheckpointError, match="interrupted save left the previous checkpoint"):
            load_checkpoint(tmp_path / "ckpt")
        (aside,) = [n for n in os.listdir(tmp_path) if "numformer-old" in n]
        _assert_model_equal(load_checkpoint(tmp_path / aside).model, old_model)
    assert _leftovers(tmp_path)
    # the next save succeeds and clears what the crash left behind
    new_model, _, _ = _save(tmp_path / "ckpt", seed=3)
    _assert_model_equal(load_checkpoint(tmp_path / "ckpt").model, new_model)
    assert os.listdir(tmp_path) == ["ckpt"]


def test_a_save_between_its_two_renames_is_waited_for_not_reported_as_a_crash(tmp_path):
    """Where a save renames twice, `path` is missing for a moment while the writer runs: the reader
    waits (and gets the checkpoint once it is back); it never advises renaming the folder aside."""
    import threading

    _save(tmp_path / "ckpt", seed=1)
    aside = tmp_path / f".ckpt.numformer-old-{os.getpid()}-abc"     # a live writer's (this process)
    os.rename(tmp_path / "ckpt", aside)
    threading.Timer(0.2, os.rename, (aside, tmp_path / "ckpt")).start()
    assert load_checkpoint(tmp_path / "ckpt").config["step"] == 1


def test_a_save_that_never_finishes_is_named_not_blamed_on_a_crash(tmp_path):
    _save(tmp_path / "ckpt", seed=1)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.rename(tmp_path / "ckpt", tmp_path / f".ckpt.numformer-old-{live.pid}-abc")
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / "ckpt")
    finally:
        live.kill()
        live.wait()
    message = _one_line(e)
    assert f"while process {live.pid} saves it" in message and "rename it" not in message, message


# ---------------------------------------------------------------------- refusing to overwrite


def test_user_folder_is_not_overwritten(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match="not a numformer checkpoint; refusing to overwrite"):
        _save(user)
    assert os.listdir(user) == ["notes.txt"] and (user / "notes.txt").read_text() == "my notes"
    assert os.listdir(tmp_path) == ["mine"]


def test_hugging_face_folder_is_not_overwritten(tmp_path):
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    (hf / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(CheckpointError, match="not a numformer checkpoint"):
        _save(hf)
    assert (hf / "model.safetensors").read_bytes() == b"weights"


def test_user_file_is_not_overwritten(tmp_path):
    (tmp_path / "ckpt").write_text("precious")
    with pytest.raises(CheckpointError, match="is a file"):
        _save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt").read_text() == "precious"


def test_checkpoint_with_a_users_extra_file_is_not_overwritten(tmp_path):
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "README.md").write_text("notes")
    with pytest.raises(CheckpointError, match="README.md"):
        _save(tmp_path / "ckpt", seed=5)
    assert (tmp_path / "ckpt" / "README.md").read_text() == "notes"


def test_diverged_weights_are_not_saved_over_a_good_checkpoint(tmp_path):
    good, _, _ = _save(tmp_path / "ckpt")
    bad = _model(1)
    bad["transformer.h.0.mlp.c_fc.bias"][1] = np.nan
    with pytest.raises(CheckpointError, match="c_fc.bias.*NaN"):
        save_checkpoint(tmp_path / "ckpt", model=bad, config={}, tokenizer="null")
    _assert_model_equal(load_checkpoint(tmp_path / "ckpt").model, good)


def test_programming_errors_on_save(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        save_checkpoint(tmp_path / "a", model={"w": np.arange(3)}, config={}, tokenizer="null")
    with pytest.raises(ValueError, match="_numformer"):
        save_checkpoint(tmp_path / "a", model=_model(), config={"_numformer": 1}, tokenizer="null")
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "a", model=_model(), config={"x": float("nan")}, tokenizer="null")
    with pytest.raises(ValueError, match="tokenizer"):
        save_checkpoint(tmp_path / "a", model=_model(), config={}, tokenizer="not json")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------ bad input


def _one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder") as e:
        load_checkpoint(tmp_path / "nope")
    _one_line(e)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "optimizer.safetensors"])
def test_missing_file(tmp_path, name):
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}: missing") as e:
        load_checkpoint(tmp_path / "ckpt")
    _one_line(e)


def test_missing_config(tmp_path):
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(tmp_path / "ckpt")


def test_invalid_json(tmp_path):
    _save(tmp_path / "ckpt")
    text = (tmp_path / "ckpt" / "config.json").read_text()
    (tmp_path / "ckpt" / "config.json").write_text(text[:-5])
    with pytest.raises(CheckpointError, match=r"config.json: invalid JSON \(.* line \d+ column \d+\)") as e:
        load_checkpoint(tmp_path / "ckpt")
    _one_line(e)


def _edit_config(folder, change):
    """Change config.json's settings (not its bookkeeping), as a hand edit would."""
    file = folder / "config.json"
    config = json.loads(file.read_text())
    change(config)
    file.write_text(json.dumps(config, indent=2))


@pytest.mark.parametrize("change", [
    lambda c: c["model"].__setitem__("n_head", 4),          # another model, same weights
    lambda c: c["model"].__setitem__("block_size", 100000),
    lambda c: c["model"].pop("n_layer"),                   # a default would fill it
    lambda c: c.__setitem__("step", 1),
    lambda c: c.__setitem__("extra", None),
    lambda c: c["rng"].__setitem__("state", {"state": 1, "inc": 3}),
], ids=["n_head", "block_size", "deleted-key", "step", "added-key", "rng"])
def test_an_edited_config_is_caught_by_its_digest(tmp_path, change):
    _save(tmp_path / "ckpt", rng=np.random.default_rng(5).bit_generator.state)
    _edit_config(tmp_path / "ckpt", change)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "ckpt")
    message = _one_line(e)
    assert message.startswith(f"{tmp_path / 'ckpt' / 'config.json'}: ") and "SHA-256" in message, message


def test_the_digest_is_of_the_settings_not_of_their_layout(tmp_path):
    """Re-indenting config.json or reordering its keys changes no setting: it still loads."""
    _, _, cfg = _save(tmp_path / "ckpt", note="中文", ratio=0.1, big=2**100)
    file = tmp_path / "ckpt" / "config.json"
    config = json.loads(file.read_text())
    file.write_text(json.dumps(dict(reversed(config.items())), ensure_ascii=True))
    assert load_checkpoint(tmp_path / "ckpt").config == cfg


def test_a_checkpoint_written_before_the_config_digest_still_loads(tmp_path):
    _, _, cfg = _save(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda c: c["_numformer"].pop("config_sha256", None))
    assert "config_sha256" not in (tmp_path / "ckpt" / "config.json").read_text()
    assert load_checkpoint(tmp_path / "ckpt").config == cfg


@pytest.mark.parametrize("digest", [7, None, ["x"]])
def test_a_digest_that_is_not_text_is_a_bad_record(tmp_path, digest):
    _save(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda c: c["_numformer"].__setitem__("config_sha256", digest))
    with pytest.raises(CheckpointError, match="config.json: bad record") as e:
        load_checkpoint(tmp_path / "ckpt")
    _one_line(e)


def test_a_gpt_whose_config_was_edited_is_refused_not_run(tmp_path):
    """n_head 2 -> 4 keeps every weight's shape: only the digest tells the model apart."""
    from numformer.model.config import GPTConfig
    from numformer.model.gpt import GPT

    GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)).save(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda c: c["model"].__setitem__("n_head", 4))
    with pytest.raises(CheckpointError, match="config.json: .*SHA-256"):
        GPT.load(tmp_path / "ckpt")


def test_config_without_bookkeeping_is_not_a_checkpoint(tmp_path):
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="not a numformer checkpoint"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_truncated_safetensors(tmp_path, name):
    _save(tmp_path / "ckpt")
    file = tmp_path / "ckpt" / name
    file.write_bytes(file.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=f"{name}: truncated") as e:
        load_checkpoint(tmp_path / "ckpt")
    _one_line(e)


def test_tampered_weights_detected_by_hash(tmp_path):
    _save(tmp_path / "ckpt")
    file = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight: still a perfectly parsable file
    file.write_bytes(bytes(data))
    read_safetensors(file)  # parses fine...
    with pytest.raises(CheckpointError, match="differ from the SHA-256") as e:  # ...but is caught
        load_checkpoint(tmp_path / "ckpt")
    _one_line(e)


def test_tampered_tokenizer_detected_by_hash(tmp_path):
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "tokenizer.json").write_text('{"type": "word"}')  # same length
    with pytest.raises(CheckpointError, match="tokenizer.json: .*SHA-256"):
        load_checkpoint(tmp_path / "ckpt")


def _rewrite_model(folder, tensors):
    """Replace model.safetensors and update the recorded hash, as a careful tamperer would."""
    from safetensors.numpy import save

    data = save(tensors)
    (folder / "model.safetensors").write_bytes(data)
    config = json.loads((folder / "config.json").read_text())
    config["_numformer"]["files"]["model.safetensors"] = {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)
    }
    (folder / "config.json").write_text(json.dumps(config))


def test_non_float_weights(tmp_path):
    _save(tmp_path / "ckpt")
    _rewrite_model(tmp_path / "ckpt", {"transformer.wte.weight": np.arange(6, dtype=np.int64)})
    with pytest.raises(CheckpointError, match="'transformer.wte.weight' has dtype int64, expected floating"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(tmp_path, bad):
    _save(tmp_path / "ckpt")
    w = np.ones((2, 3), dtype=np.float32)
    w[1, 2] = bad
    _rewrite_model(tmp_path / "ckpt", {"transformer.wte.weight": w})
    with pytest.raises(CheckpointError, match="'transformer.wte.weight' contains NaN or inf") as e:
        load_checkpoint(tmp_path / "ckpt")
    _one_line(e)


def test_garbage_with_matching_hash_is_still_refused(tmp_path):
    _save(tmp_path / "ckpt")
    folder = tmp_path / "ckpt"
    data = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"
    (folder / "model.safetensors").write_bytes(data)
    config = json.loads((folder / "config.json").read_text())
    config["_numformer"]["files"]["model.safetensors"] = {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)
    }
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="header is not JSON"):
        load_checkpoint(folder)


def test_newer_format_is_refused(tmp_path):
    _save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["_numformer"]["format"] = 99
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_file_is_not_a_checkpoint_folder(tmp_path):
    _save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="is a file; a numformer checkpoint is a folder"):
        load_checkpoint(tmp_path / "ckpt" / "model.safetensors")


# ------------------------------------------------------------------------------------ pickles


class _Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def forbid_opening(monkeypatch):
    """forbid_opening(*files): from then on, opening those files or unpickling fails the test."""
    real_open = builtins.open

    def activate(*files):
        forbidden = {os.fspath(f) for f in files}

        def guarded_open(file, *args, **kwargs):
            assert os.fspath(file) not in forbidden, f"opened {file}"
            return real_open(file, *args, **kwargs)

        def no_unpickle(*args, **kwargs):
            raise AssertionError("pickle used")

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(pickle, "load", no_unpickle)
        monkeypatch.setattr(pickle, "loads", no_unpickle)
        monkeypatch.setattr(pickle, "Unpickler", no_unpickle)

    return activate


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".pkl", ".ckpt"])
def test_pickle_file_is_refused_unopened(tmp_path, forbid_opening, suffix):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"model{suffix}"
    evil.write_bytes(pickle.dumps(_Payload(str(marker))))
    forbid_opening(evil)
    for load in (load_checkpoint, read_safetensors):
        with pytest.raises(CheckpointError, match="pickle can run arbitrary code") as e:
            load(evil)
        _one_line(e)
    assert not marker.exists()


def test_folder_of_pickles_is_refused_unopened(tmp_path, forbid_opening):
    marker = tmp_path / "pwned"
    folder = tmp_path / "hf"
    folder.mkdir()
    evil = folder / "pytorch_model.bin"
    evil.write_bytes(pickle.dumps(_Payload(str(marker))))
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    forbid_opening(evil)
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*pickle can run arbitrary code"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_not_unpickled(tmp_path, forbid_opening):
    marker = tmp_path / "pwned"
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(pickle.dumps(_Payload(str(marker))))
    forbid_opening()  # it may be opened (to read its header), never unpickled
    with pytest.raises(CheckpointError, match="looks like a PyTorch/pickle file"):
        read_safetensors(disguised)
    assert not marker.exists()


# ------------------------------------------------------------------------------- read_json

@pytest.mark.parametrize("make, words", [
    (lambda f: None, ["cfg.json: missing; a folder needs it"]),
    (lambda f: f.mkdir(), ["cfg.json: cannot be read", "directory"]),   # an OSError, not "invalid JSON"
    (lambda f: f.write_bytes(b'{"a": "\xff"}'), ["cfg.json: not UTF-8 text"]),
    (lambda f: f.write_text('{"a": 1,'), ["cfg.json: invalid JSON (", "line 1 column 9"]),
    (lambda f: f.write_text("[1, 2]"), ["cfg.json: expected a JSON object, found list"]),
])
def test_read_json_names_the_file_and_what_went_wrong(tmp_path, make, words):
    file = tmp_path / "cfg.json"
    make(file)
    with pytest.raises(CheckpointError) as e:
        checkpoint.read_json(file, "a folder needs it")
    message = _one_line(e)
    for word in words:
        assert word in message
    assert str(file) in message


@pytest.fixture
def deadline():
    """deadline(seconds): fail the test (TimeoutError) if it is still running then; a read that
    blocks on a FIFO is interrupted by the alarm."""
    import signal

    def expire(*_):
        raise TimeoutError("still running at the deadline: the reader blocked")

    old = signal.signal(signal.SIGALRM, expire)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("make, words", [
    (lambda f: os.mkfifo(f), ["cfg.json: cannot be read: it is a FIFO"]),                 # used to block
    (lambda f: os.symlink("/dev/zero", f), ["cfg.json: cannot be read: it is a character device"]),  # to MemoryError
    (lambda f: f.write_text('{"n": ' + "9" * 5000 + "}"), ["cfg.json: invalid JSON", "4,300 digits"]),
    (lambda f: f.write_text('{"n": [' + "1" * 4301 + "]}"), ["cfg.json: invalid JSON", "digits"]),
    (lambda f: f.write_text(json.dumps({"pad": " " * 20000})), ["cfg.json: 20,011 bytes", "10,000", "not read"]),
    (lambda f: os.symlink(f.parent / "nowhere", f), ["cfg.json: missing"]),
], ids=["fifo", "dev-zero", "huge-int", "huge-int-in-list", "too-large", "dangling-link"])
def test_read_json_reads_only_regular_files_of_a_sane_size(tmp_path, deadline, make, words):
    file = tmp_path / "cfg.json"
    make(file)
    deadline(20)
    with pytest.raises(CheckpointError) as e:
        checkpoint.read_json(file, limit=10_000)
    message = _one_line(e)
    for word in words:
        assert word in message, message
    assert message.startswith(str(file))


def test_a_checkpoint_whose_config_is_a_fifo_is_refused_not_waited_on(tmp_path, deadline):
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    os.mkfifo(tmp_path / "ckpt" / "config.json")
    deadline(20)
    with pytest.raises(CheckpointError, match="config.json: cannot be read: it is a FIFO"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "optimizer.safetensors"])
def test_a_checkpoint_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path, deadline, name):
    from numformer.model.config import GPTConfig
    from numformer.model.gpt import GPT

    GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)).save(
        tmp_path / "ckpt", optimizer={"m": np.zeros(3, np.float32)})
    (tmp_path / "ckpt" / name).unlink()
    os.mkfifo(tmp_path / "ckpt" / name)
    deadline(20)
    with pytest.raises(CheckpointError, match=f"{name}: cannot be read: it is a FIFO"):
        GPT.load(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_checkpoint_file_that_cannot_be_opened_is_one_checkpoint_error(tmp_path, monkeypatch, name):
    """Simulated: this suite may run as root, for whom chmod does not stop a read."""
    _save(tmp_path / "ckpt")
    real_open = os.open

    def open_(file, flags, *args, **kwargs):
        if os.fspath(file) == name:
            raise PermissionError(13, "Permission denied", name)
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(checkpoint.os, "open", open_)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "ckpt")
    assert _one_line(e) == f"{tmp_path / 'ckpt' / name}: cannot be read (Permission denied)"


def test_a_symbolic_link_to_a_regular_file_is_read(tmp_path):
    """Hugging Face's cache holds its files as links into blobs/: they must still be read."""
    (tmp_path / "blob").write_text('{"a": 1}')
    os.symlink(tmp_path / "blob", tmp_path / "cfg.json")
    assert checkpoint.read_json(tmp_path / "cfg.json") == {"a": 1}


def test_read_json_returns_the_value(tmp_path):
    file = tmp_path / "cfg.json"
    file.write_text('{"n": [1, 2.5, null]}', encoding="utf-8")
    assert checkpoint.read_json(file) == {"n": [1, 2.5, None]}
    file.write_text("[1, 2]")
    assert checkpoint.read_json(file, expect=None) == [1, 2]
    assert checkpoint.read_json(file, expect=list) == [1, 2]


# -------------------------------------------------------------------------- read_safetensors


def test_read_safetensors_round_trip_keeps_int_tensors(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "ids": np.arange(5, dtype=np.int64)}
    save_file(tensors, tmp_path / "x.safetensors")
    out = read_safetensors(tmp_path / "x.safetensors")
    _assert_model_equal(out, tensors)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda b: b[:5], "only 5 bytes"),
        (lambda b: b[:40], "header claims"),
        (lambda b: b[:-1], "truncated: tensor 'w'"),
        (lambda b: b + b"\x00" * 4, "4 bytes after the last tensor"),
        (lambda b: b"", "only 0 bytes"),
    ],
    ids=["tiny", "cut-in-header", "cut-in-data", "trailing", "empty"],
)
def test_read_safetensors_damage(tmp_path, damage, message):
    from safetensors.numpy import save

    file = tmp_path / "x.safetensors"
    file.write_bytes(damage(save({"w": np.ones(6, dtype=np.float32)})))
    with pytest.raises(CheckpointError, match=message) as e:
        read_safetensors(file)
    assert _one_line(e).startswith(str(file))


def _raw_safetensors(header: dict, data: bytes) -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + data


@pytest.mark.parametrize(
    "header,message",
    [
        ({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 4]}}, "inconsistent"),  # 3 bfloat16 are 6 bytes
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, "inconsistent"),
        ({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 4]}}, "unsupported dtype"),
        ({"w": {"dtype": "F32"}}, "damaged header entry"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},       # two tensors on the same bytes
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "starts at byte 0"),
        ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, "starts at byte 2"),  # a gap before it
    ],
)
def test_read_safetensors_bad_header(tmp_path, header, message):
    file = tmp_path / "x.safetensors"
    file.write_bytes(_raw_safetensors(header, b"\x00" * 4))
    with pytest.raises(CheckpointError, match=message) as e:
        read_safetensors(file)
    _one_line(e)


def test_read_safetensors_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        read_safetensors(tmp_path / "x.safetensors")


def test_read_safetensors_accepts_a_header_length_whose_first_byte_is_0x80(tmp_path):
    """Header lengths are multiples of 8, so about 1 file in 32 starts with byte 0x80, the same
    first byte as a pickle. Such a file is valid safetensors and must load."""
    from safetensors.numpy import save_file

    from numformer.checkpoint import read_safetensors

    for k in range(1, 200):
        f = tmp_path / f"t{k}.safetensors"
        save_file({"t" * k: np.arange(3, dtype=np.float32)}, str(f))
        if f.read_bytes()[0] == 0x80:
            break
    else:
        raise AssertionError("no name length gave a header length with first byte 0x80")
    out = read_safetensors(f)
    np.testing.assert_array_equal(out["t" * k], np.arange(3, dtype=np.float32))


# ------------------------------------------------------- what cleaning up may and may not delete


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _temp_folder(parent, name, pid=None):
    """A folder named like a save's temporary folder; with pid, carrying numformer's writer record."""
    folder = parent / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"partial")
    if pid is not None:
        record = {"writer": "numformer", "pid": pid, "host": __import__("socket").gethostname()}
        (folder / checkpoint.WRITER_MARK).write_text(json.dumps(record))
    return folder


def test_cleanup_deletes_only_numformers_abandoned_folders(tmp_path):
    """A user's folders that merely carry the names, and the temporary folder of a save still
    running in another process, survive a save; what a dead writer left is removed."""
    users_tmp = tmp_path / ".ckpt.numformer-tmp-mine"
    users_tmp.mkdir()
    (users_tmp / "notes.txt").write_text("keep")
    users_old = tmp_path / ".ckpt.numformer-old-123-mine"
    users_old.mkdir()
    (users_old / "notes.txt").write_text("keep too")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = _temp_folder(tmp_path, f".ckpt.numformer-tmp-{live.pid}-abc", pid=live.pid)
        abandoned = _temp_folder(tmp_path, f".ckpt.numformer-tmp-{_dead_pid()}-abc", pid=_dead_pid())
        _save(tmp_path / "ckpt")
        _save(tmp_path / "ckpt", seed=2)
        assert (users_tmp / "notes.txt").read_text() == "keep"
        assert (users_old / "notes.txt").read_text() == "keep too"
        assert (running / "model.safetensors").read_bytes() == b"partial"
        assert not abandoned.exists()
    finally:
        live.kill()
        live.wait()
    _save(tmp_path / "ckpt", seed=3)       # its writer has ended now
    assert not running.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt", users_tmp.name, users_old.name])


def test_temporary_names_carry_the_writers_pid(tmp_path, monkeypatch):
    seen = []
    real = checkpoint._write_file

    def spy(file, data):
        seen.append(file.parent.name)
        real(file, data)

    monkeypatch.setattr(checkpoint, "_write_file", spy)
    _save(tmp_path / "ckpt")
    assert seen and all(n.startswith(f".ckpt.numformer-tmp-{os.getpid()}-") for n in seen), seen


# ------------------------------------------------------------------------------------- locking

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from numformer.checkpoint import lock_folder

    lock = lock_folder(sys.argv[1], "numformer train")
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _hold_lock(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_with_one_line_naming_the_first(tmp_path):
    from numformer.errors import NumformerError

    out = tmp_path / "out"
    first = _hold_lock(out)
    try:
        with pytest.raises(NumformerError) as e:
            checkpoint.lock_folder(out, "numformer train")
        msg = str(e.value)
        assert "\n" not in msg and "in use by numformer train" in msg, msg
        assert f"pid {first.pid}" in msg and __import__("socket").gethostname() in msg, msg
    finally:
        first.kill()          # SIGKILL: no cleanup runs, yet the lock goes with the process
        first.wait()
    with checkpoint.lock_folder(out, "numformer train"):
        pass


def test_a_released_lock_leaves_no_trace(tmp_path):
    with checkpoint.lock_folder(tmp_path / "new", "numformer train"):
        assert os.listdir(tmp_path / "new") == [checkpoint.LOCK_FILE]
        record = json.loads((tmp_path / "new" / checkpoint.LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["numformer"] == "numformer train"
    assert os.listdir(tmp_path) == []                  # it made the folder and put nothing else in it
    (tmp_path / "kept").mkdir()
    with checkpoint.lock_folder(tmp_path / "kept", "numformer train"):
        (tmp_path / "kept" / "metrics.jsonl").write_text("")
    assert os.listdir(tmp_path / "kept") == ["metrics.jsonl"]


def test_a_users_file_named_like_the_lock_file_is_not_overwritten(tmp_path):
    from numformer.errors import NumformerError

    (tmp_path / checkpoint.LOCK_FILE).write_text("my notes")
    with pytest.raises(NumformerError, match="not written by numformer"):
        checkpoint.lock_folder(tmp_path, "numformer train")
    assert (tmp_path / checkpoint.LOCK_FILE).read_text() == "my notes"


def test_without_create_a_folder_without_a_lock_file_gets_none(tmp_path):
    with checkpoint.lock_folder(tmp_path, "numformer convert", create=False):
        pass
    assert os.listdir(tmp_path) == []
