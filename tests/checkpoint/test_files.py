"""The readers of the files users hand numformer (read_json, read_safetensors): regular files of a
sane size only, one error line naming the file, crafted headers refused, bfloat16 widened exactly."""

import json
import os
import struct

import numpy as np
import pytest

from numformer import checkpoint
from numformer.checkpoint import load_checkpoint, read_safetensors
from numformer.errors import CheckpointError
from tests.helpers import DEEP, assert_model_equal, one_line, save_small


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
    message = one_line(e)
    for word in words:
        assert word in message
    assert str(file) in message


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
    message = one_line(e)
    for word in words:
        assert word in message, message
    assert message.startswith(str(file))


def test_a_checkpoint_whose_config_is_a_fifo_is_refused_not_waited_on(tmp_path, deadline):
    save_small(tmp_path / "ckpt")
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
    save_small(tmp_path / "ckpt")
    real_open = os.open

    def open_(file, flags, *args, **kwargs):
        if os.fspath(file) == name:
            raise PermissionError(13, "Permission denied", name)
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(checkpoint.os, "open", open_)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "ckpt")
    assert one_line(e) == f"{tmp_path / 'ckpt' / name}: cannot be read (Permission denied)"


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
    assert_model_equal(out, tensors)


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
    assert one_line(e).startswith(str(file))


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
    one_line(e)


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


# ----------------------------------------------- crafted safetensors headers (they used to crash)


def _safetensors(header: bytes, data: bytes = b"\0" * 4) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


HEADERS = {
    "dtype_is_a_list": b'{"a":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}',
    "offset_infinity": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,Infinity]}}',
    "offset_1e400": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,1e400]}}',
    "shape_infinity": b'{"a":{"dtype":"F32","shape":[Infinity],"data_offsets":[0,4]}}',
    "shape_negative_float": b'{"a":{"dtype":"F32","shape":[-1.0],"data_offsets":[0,4]}}',
    "offsets_a_dict": b'{"a":{"dtype":"F32","shape":[1],"data_offsets":{"x":0,"y":4}}}',
    "nested_200000_deep": b'{"a":' + b"[" * DEEP + b"]" * DEEP + b"}",
}


@pytest.mark.parametrize("case", HEADERS)
def test_crafted_safetensors_header_is_one_checkpoint_error(case, tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(_safetensors(HEADERS[case]))
    with pytest.raises(CheckpointError) as e:
        read_safetensors(file)
    assert str(file) in one_line(e)


def test_a_sound_header_of_the_same_shape_still_reads(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(_safetensors(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'))
    np.testing.assert_array_equal(read_safetensors(file)["a"], np.zeros(1, np.float32))
