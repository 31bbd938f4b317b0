"""Reading a checkpoint: one clear error for each bad or edited file, and pickles refused unopened."""

import builtins
import hashlib
import json
import os
import pickle

import numpy as np
import pytest

from numformer.checkpoint import load_checkpoint, read_safetensors
from numformer.errors import CheckpointError
from tests.helpers import one_line, save_small


# ------------------------------------------------------------------------------------ bad input


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder") as e:
        load_checkpoint(tmp_path / "nope")
    one_line(e)


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "optimizer.safetensors"])
def test_missing_file(tmp_path, name):
    save_small(tmp_path / "ckpt")
    (tmp_path / "ckpt" / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}: missing") as e:
        load_checkpoint(tmp_path / "ckpt")
    one_line(e)


def test_missing_config(tmp_path):
    save_small(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(tmp_path / "ckpt")


def test_invalid_json(tmp_path):
    save_small(tmp_path / "ckpt")
    text = (tmp_path / "ckpt" / "config.json").read_text()
    (tmp_path / "ckpt" / "config.json").write_text(text[:-5])
    with pytest.raises(CheckpointError, match=r"config.json: invalid JSON \(.* line \d+ column \d+\)") as e:
        load_checkpoint(tmp_path / "ckpt")
    one_line(e)


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
    save_small(tmp_path / "ckpt", rng=np.random.default_rng(5).bit_generator.state)
    _edit_config(tmp_path / "ckpt", change)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "ckpt")
    message = one_line(e)
    assert message.startswith(f"{tmp_path / 'ckpt' / 'config.json'}: ") and "SHA-256" in message, message


def test_the_digest_is_of_the_settings_not_of_their_layout(tmp_path):
    """Re-indenting config.json or reordering its keys changes no setting: it still loads."""
    _, _, cfg = save_small(tmp_path / "ckpt", note="中文", ratio=0.1, big=2**100)
    file = tmp_path / "ckpt" / "config.json"
    config = json.loads(file.read_text())
    file.write_text(json.dumps(dict(reversed(config.items())), ensure_ascii=True))
    assert load_checkpoint(tmp_path / "ckpt").config == cfg


def test_a_checkpoint_written_before_the_config_digest_still_loads(tmp_path):
    _, _, cfg = save_small(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda c: c["_numformer"].pop("config_sha256", None))
    assert "config_sha256" not in (tmp_path / "ckpt" / "config.json").read_text()
    assert load_checkpoint(tmp_path / "ckpt").config == cfg


@pytest.mark.parametrize("digest", [7, None, ["x"]])
def test_a_digest_that_is_not_text_is_a_bad_record(tmp_path, digest):
    save_small(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda c: c["_numformer"].__setitem__("config_sha256", digest))
    with pytest.raises(CheckpointError, match="config.json: bad record") as e:
        load_checkpoint(tmp_path / "ckpt")
    one_line(e)


def test_a_gpt_whose_config_was_edited_is_refused_not_run(tmp_path):
    """n_head 2 -> 4 keeps every weight's shape: only the digest tells the model apart."""
    from numformer.model.config import GPTConfig
    from numformer.model.gpt import GPT

    GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)).save(tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda c: c["model"].__setitem__("n_head", 4))
    with pytest.raises(CheckpointError, match="config.json: .*SHA-256"):
        GPT.load(tmp_path / "ckpt")


def test_config_without_bookkeeping_is_not_a_checkpoint(tmp_path):
    save_small(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="not a numformer checkpoint"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_truncated_safetensors(tmp_path, name):
    save_small(tmp_path / "ckpt")
    file = tmp_path / "ckpt" / name
    file.write_bytes(file.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=f"{name}: truncated") as e:
        load_checkpoint(tmp_path / "ckpt")
    one_line(e)


def test_tampered_weights_detected_by_hash(tmp_path):
    save_small(tmp_path / "ckpt")
    file = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight: still a perfectly parsable file
    file.write_bytes(bytes(data))
    read_safetensors(file)  # parses fine...
    with pytest.raises(CheckpointError, match="differ from the SHA-256") as e:  # ...but is caught
        load_checkpoint(tmp_path / "ckpt")
    one_line(e)


def test_tampered_tokenizer_detected_by_hash(tmp_path):
    save_small(tmp_path / "ckpt")
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
    save_small(tmp_path / "ckpt")
    _rewrite_model(tmp_path / "ckpt", {"transformer.wte.weight": np.arange(6, dtype=np.int64)})
    with pytest.raises(CheckpointError, match="'transformer.wte.weight' has dtype int64, expected floating"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(tmp_path, bad):
    save_small(tmp_path / "ckpt")
    w = np.ones((2, 3), dtype=np.float32)
    w[1, 2] = bad
    _rewrite_model(tmp_path / "ckpt", {"transformer.wte.weight": w})
    with pytest.raises(CheckpointError, match="'transformer.wte.weight' contains NaN or inf") as e:
        load_checkpoint(tmp_path / "ckpt")
    one_line(e)


def test_garbage_with_matching_hash_is_still_refused(tmp_path):
    save_small(tmp_path / "ckpt")
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
    save_small(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["_numformer"]["format"] = 99
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "ckpt")


def test_a_file_is_not_a_checkpoint_folder(tmp_path):
    save_small(tmp_path / "ckpt")
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
        one_line(e)
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
