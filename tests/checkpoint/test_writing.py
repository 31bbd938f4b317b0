"""Writing a checkpoint: an exact round trip, atomic replacement, never overwriting what is not
numformer's, and cleaning up only its own abandoned folders."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from numformer import checkpoint
from numformer.checkpoint import load_checkpoint, save_checkpoint
from numformer.errors import CheckpointError
from tests.helpers import assert_model_equal, leftovers, one_line, save_small, small_model


# ----------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, dtype):
    rng_state = np.random.default_rng(123).bit_generator.state  # 128-bit ints must survive JSON
    config = {"rng": rng_state, "best_val_loss": 1.2345678901234567, "note": "中文 ok"}
    model, opt, cfg = save_small(tmp_path / "ckpt", dtype=dtype, **config)
    ck = load_checkpoint(tmp_path / "ckpt")
    assert_model_equal(ck.model, model)
    assert_model_equal(ck.optimizer, opt)
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

    model, _, _ = save_small(tmp_path / "ckpt")
    theirs = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert_model_equal(theirs, model)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    record = config["_numformer"]["files"]["model.safetensors"]
    data = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_without_optimizer_and_numpy_scalars_in_config(tmp_path):
    save_small(tmp_path / "ckpt", optimizer=False, iter_num=np.int64(7), lr=np.float32(0.5))
    ck = load_checkpoint(tmp_path / "ckpt")
    assert ck.optimizer is None
    assert ck.config["iter_num"] == 7 and ck.config["lr"] == 0.5


def test_replacing_a_checkpoint_keeps_only_the_new_one(tmp_path):
    save_small(tmp_path / "ckpt", seed=1)
    model, _, _ = save_small(tmp_path / "ckpt", seed=2, optimizer=False)
    ck = load_checkpoint(tmp_path / "ckpt")
    assert_model_equal(ck.model, model)
    assert ck.optimizer is None and ck.config["step"] == 2
    assert not (tmp_path / "ckpt" / "optimizer.safetensors").exists()
    assert os.listdir(tmp_path) == ["ckpt"]


def test_creates_missing_parent_and_accepts_an_empty_folder(tmp_path):
    save_small(tmp_path / "out" / "run" / "latest")
    load_checkpoint(tmp_path / "out" / "run" / "latest")
    (tmp_path / "empty").mkdir()
    save_small(tmp_path / "empty")
    load_checkpoint(tmp_path / "empty")


# ------------------------------------------------------------------------------------ atomicity


@pytest.mark.parametrize("failing_file", sorted(checkpoint.CHECKPOINT_FILES))
def test_crash_while_writing_keeps_the_old_checkpoint(tmp_path, monkeypatch, failing_file):
    old_model, _, _ = save_small(tmp_path / "ckpt", seed=1)
    real_write = checkpoint._write_file

    def half_then_crash(file, data):
        if file.name == failing_file:
            with open(file, "xb") as f:
                f.write(data[: len(data) // 2])
            raise OSError("disk full (simulated)")
        real_write(file, data)

    monkeypatch.setattr(checkpoint, "_write_file", half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        save_small(tmp_path / "ckpt", seed=2)
    ck = load_checkpoint(tmp_path / "ckpt")
    assert_model_equal(ck.model, old_model)
    assert ck.config["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt"]  # no temp folder left behind


def test_crash_before_any_checkpoint_exists_leaves_nothing(tmp_path, monkeypatch):
    def crash(file, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_small(tmp_path / "ckpt")
    assert os.listdir(tmp_path) == []


def test_failed_rename_into_place_restores_the_old_checkpoint(tmp_path, monkeypatch):
    """Where folders cannot trade names in one step, the old one goes aside first."""
    old_model, _, _ = save_small(tmp_path / "ckpt", seed=1)
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
        save_small(tmp_path / "ckpt", seed=2)
    monkeypatch.undo()
    assert_model_equal(load_checkpoint(tmp_path / "ckpt").model, old_model)
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
    old_model, _, _ = save_small(tmp_path / "ckpt", seed=1)
    proc = subprocess.run(
        [sys.executable, "-c", HARD_CRASH, str(tmp_path / "ckpt"), point], capture_output=True
    )
    assert proc.returncode == 17, proc.stderr.decode()
    if point == "write":
        assert_model_equal(load_checkpoint(tmp_path / "ckpt").model, old_model)
    elif point == "exchange":   # the new checkpoint is in; the old one is left under the temporary name
        assert load_checkpoint(tmp_path / "ckpt").config == {"step": 2}
    else:
        # path is momentarily empty; the complete old checkpoint is aside and the error says where
        with pytest.raises(CheckpointError, match="interrupted save left the previous checkpoint"):
            load_checkpoint(tmp_path / "ckpt")
        (aside,) = [n for n in os.listdir(tmp_path) if "numformer-old" in n]
        assert_model_equal(load_checkpoint(tmp_path / aside).model, old_model)
    assert leftovers(tmp_path)
    # the next save succeeds and clears what the crash left behind
    new_model, _, _ = save_small(tmp_path / "ckpt", seed=3)
    assert_model_equal(load_checkpoint(tmp_path / "ckpt").model, new_model)
    assert os.listdir(tmp_path) == ["ckpt"]


def test_a_save_between_its_two_renames_is_waited_for_not_reported_as_a_crash(tmp_path):
    """Where a save renames twice, `path` is missing for a moment while the writer runs: the reader
    waits (and gets the checkpoint once it is back); it never advises renaming the folder aside."""
    import threading

    save_small(tmp_path / "ckpt", seed=1)
    aside = tmp_path / f".ckpt.numformer-old-{os.getpid()}-abc"     # a live writer's (this process)
    os.rename(tmp_path / "ckpt", aside)
    threading.Timer(0.2, os.rename, (aside, tmp_path / "ckpt")).start()
    assert load_checkpoint(tmp_path / "ckpt").config["step"] == 1


def test_a_save_that_never_finishes_is_named_not_blamed_on_a_crash(tmp_path):
    save_small(tmp_path / "ckpt", seed=1)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.rename(tmp_path / "ckpt", tmp_path / f".ckpt.numformer-old-{live.pid}-abc")
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(tmp_path / "ckpt")
    finally:
        live.kill()
        live.wait()
    message = one_line(e)
    assert f"while process {live.pid} saves it" in message and "rename it" not in message, message


# ---------------------------------------------------------------------- refusing to overwrite


def test_user_folder_is_not_overwritten(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match="not a numformer checkpoint; refusing to overwrite"):
        save_small(user)
    assert os.listdir(user) == ["notes.txt"] and (user / "notes.txt").read_text() == "my notes"
    assert os.listdir(tmp_path) == ["mine"]


def test_hugging_face_folder_is_not_overwritten(tmp_path):
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    (hf / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(CheckpointError, match="not a numformer checkpoint"):
        save_small(hf)
    assert (hf / "model.safetensors").read_bytes() == b"weights"


def test_user_file_is_not_overwritten(tmp_path):
    (tmp_path / "ckpt").write_text("precious")
    with pytest.raises(CheckpointError, match="is a file"):
        save_small(tmp_path / "ckpt")
    assert (tmp_path / "ckpt").read_text() == "precious"


def test_checkpoint_with_a_users_extra_file_is_not_overwritten(tmp_path):
    save_small(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "README.md").write_text("notes")
    with pytest.raises(CheckpointError, match="README.md"):
        save_small(tmp_path / "ckpt", seed=5)
    assert (tmp_path / "ckpt" / "README.md").read_text() == "notes"


def test_diverged_weights_are_not_saved_over_a_good_checkpoint(tmp_path):
    good, _, _ = save_small(tmp_path / "ckpt")
    bad = small_model(1)
    bad["transformer.h.0.mlp.c_fc.bias"][1] = np.nan
    with pytest.raises(CheckpointError, match="c_fc.bias.*NaN"):
        save_checkpoint(tmp_path / "ckpt", model=bad, config={}, tokenizer="null")
    assert_model_equal(load_checkpoint(tmp_path / "ckpt").model, good)


def test_programming_errors_on_save(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        save_checkpoint(tmp_path / "a", model={"w": np.arange(3)}, config={}, tokenizer="null")
    with pytest.raises(ValueError, match="_numformer"):
        save_checkpoint(tmp_path / "a", model=small_model(), config={"_numformer": 1}, tokenizer="null")
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "a", model=small_model(), config={"x": float("nan")}, tokenizer="null")
    with pytest.raises(ValueError, match="tokenizer"):
        save_checkpoint(tmp_path / "a", model=small_model(), config={}, tokenizer="not json")
    assert os.listdir(tmp_path) == []


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
        save_small(tmp_path / "ckpt")
        save_small(tmp_path / "ckpt", seed=2)
        assert (users_tmp / "notes.txt").read_text() == "keep"
        assert (users_old / "notes.txt").read_text() == "keep too"
        assert (running / "model.safetensors").read_bytes() == b"partial"
        assert not abandoned.exists()
    finally:
        live.kill()
        live.wait()
    save_small(tmp_path / "ckpt", seed=3)       # its writer has ended now
    assert not running.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt", users_tmp.name, users_old.name])


def test_temporary_names_carry_the_writers_pid(tmp_path, monkeypatch):
    seen = []
    real = checkpoint._write_file

    def spy(file, data):
        seen.append(file.parent.name)
        real(file, data)

    monkeypatch.setattr(checkpoint, "_write_file", spy)
    save_small(tmp_path / "ckpt")
    assert seen and all(n.startswith(f".ckpt.numformer-tmp-{os.getpid()}-") for n in seen), seen
