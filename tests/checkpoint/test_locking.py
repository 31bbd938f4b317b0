"""The lock on a folder that a run holds: a second process is refused with one line naming the first."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from numformer import checkpoint


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
