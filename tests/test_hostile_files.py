"""Crafted files that used to end in a traceback: each must be refused in one line.

Safetensors headers whose dtype is a list or whose sizes are Infinity / 1e400 / floats, JSON
nested 200,000 deep (a safetensors header, a tokenizer document, a TOML config), a tokenizer
holding a lone surrogate or more characters than its model's vocabulary, and a config whose
`bias` is the text "false" (which Python would read as true).
"""

import json
import os
import struct

import numpy as np
import pytest

from numformer.checkpoint import read_safetensors
from numformer.data.tokenizer import CharTokenizer, check_fits, from_json
from numformer.errors import CheckpointError, DataError, UsageError
from numformer.model.config import GPTConfig, InvalidConfig
from numformer.training.config import load_toml

DEEP = 200_000


def _safetensors(header: bytes, data: bytes = b"\0" * 4) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


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
    assert str(file) in _one_line(e)


def test_a_sound_header_of_the_same_shape_still_reads(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(_safetensors(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'))
    np.testing.assert_array_equal(read_safetensors(file)["a"], np.zeros(1, np.float32))


def test_tokenizer_json_nested_200000_deep_is_a_data_error():
    with pytest.raises(DataError) as e:
        from_json("[" * DEEP + "]" * DEEP)
    assert "nested too deeply" in _one_line(e)


@pytest.mark.parametrize("text", ["a = " + "[" * DEEP + "]" * DEEP, "a = " + "{x=" * 5000 + "1" + "}" * 5000])
def test_toml_nested_too_deeply_is_a_usage_error(text, tmp_path):
    file = tmp_path / "deep.toml"
    file.write_text(text + "\n")
    with pytest.raises(UsageError) as e:
        load_toml(str(file))
    assert "nested too deeply" in _one_line(e)


@pytest.mark.parametrize("chars", [["a", "\ud800"], ["\udcff"]])
def test_a_tokenizer_with_a_lone_surrogate_is_refused(chars):
    with pytest.raises(DataError) as e:
        from_json(json.dumps({"type": "char", "format": 1, "chars": chars}))
    assert "lone surrogate" in _one_line(e)


def test_a_tokenizer_larger_than_the_model_does_not_fit():
    tok = CharTokenizer.from_text("abcdef")
    check_fits(tok, 6, "here")            # equal: fine
    with pytest.raises(DataError) as e:
        check_fits(tok, 5, "ckpt")
    assert "6 tokens" in _one_line(e) and "5" in str(e.value)


def test_unknown_characters_are_all_named_up_to_five_with_a_count():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(DataError) as e:
        tok.encode("abc xyz")
    msg = _one_line(e)
    assert "3 characters" in msg and all(repr(c) in msg for c in "xyz"), msg
    with pytest.raises(DataError) as e:
        tok.encode("a1234567")
    msg = _one_line(e)
    assert "7 characters" in msg and "and 2 more" in msg and "'5'" in msg and "'6'" not in msg, msg
    with pytest.raises(DataError) as e:
        tok.encode("aqq")
    assert "character 'q'" in str(e.value) and "2 occurrences" in str(e.value)


@pytest.mark.parametrize("bias", ["false", "true", 0, 1, None])
def test_bias_must_be_a_boolean_in_a_model_config(bias):
    with pytest.raises(InvalidConfig) as e:     # its caller names the flag or the file
        GPTConfig.from_dict({"bias": bias})
    assert "bias must be true or false" in _one_line(e)


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), 0.0])
def test_layer_norm_eps_must_be_positive_and_finite(eps):
    with pytest.raises(InvalidConfig):
        GPTConfig(layer_norm_eps=eps)


def test_bias_false_as_text_in_a_toml_file_is_refused(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('bias = "false"\n')
    with pytest.raises(UsageError) as e:
        load_toml(str(file))
    assert "bias must be bool" in _one_line(e)


@pytest.fixture
def deadline():
    """deadline(seconds): fail with TimeoutError if the test still runs then (a read blocked)."""
    import signal

    def expire(*_):
        raise TimeoutError("still running at the deadline: the reader blocked")

    old = signal.signal(signal.SIGALRM, expire)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("make, words", [(os.mkfifo, "a FIFO"),
                                         (lambda f: os.symlink("/dev/zero", f), "a character device")],
                         ids=["fifo", "dev-zero"])
def test_a_toml_config_that_is_not_a_regular_file_is_named_for_what_it_is(tmp_path, deadline, make, words):
    file = tmp_path / "c.toml"
    make(file)
    deadline(20)
    with pytest.raises(UsageError) as e:
        load_toml(str(file))
    assert _one_line(e).startswith(f"{file}: cannot be read: it is {words}")


def _bpe_doc(vocab, merges):
    from tokenizers import Tokenizer, models

    hf = json.loads(Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")])).to_str())
    hf["model"].update(vocab=vocab, merges=merges)
    return json.dumps({"type": "bpe", "format": 1, "hf": hf})


@pytest.mark.parametrize("vocab, merges, words", [
    ({"a": 0, "b": 1}, [["a", "b"]], ["model.merges[0]", "'ab' is not in model.vocab"]),   # tokenizers panicked
    ({"a": 0, "b": 1, "ab": 2}, ["a b c"], ["model.merges[0] is not a pair"]),
    ({"a": 0, "b": 1, "ab": 7}, [["a", "b"]], ["model.vocab", "'ab' has id 7"]),            # past the embedding
    ({"a": 0, "b": 1, "ab": 1}, [["a", "b"]], ["both have id 1"]),
    ({"a": 0, "b": "1", "ab": 2}, [["a", "b"]], ["'b' has id '1'"]),
])
def test_a_bpe_model_tokenizers_cannot_take_is_one_data_error(capfd, vocab, merges, words):
    with pytest.raises(DataError) as e:
        from_json(_bpe_doc(vocab, merges))
    message = _one_line(e)
    assert all(w in message for w in words), message
    assert "panicked" not in capfd.readouterr().err
