import json

import numpy as np
import pytest

from numformer.data.batches import check_length, get_batch, prepare
from numformer.data.cache import TokenFile
from numformer.data.tokenizer import BPETokenizer, CharTokenizer
from numformer.errors import DataError, UsageError


@pytest.fixture(scope="session")
def text(shakespeare_text):
    return shakespeare_text[:150_000]


def _entry(folder):
    (ids,) = folder.glob("tokens-*.bin")
    (meta,) = folder.glob("tokens-*.json")
    return ids, meta


def test_char_split_is_first_90_percent(text, tmp_path):
    train, val, tok = prepare(text, "char", cache_dir=tmp_path)
    vocab = sorted(set(text))
    expected = np.array([vocab.index(c) for c in text])
    n_train = int(0.9 * len(text))
    assert train.dtype == np.uint8 and val.dtype == np.uint8  # V <= 256: one byte per id
    assert isinstance(train, TokenFile) and isinstance(val, TokenFile)  # read from the cache file
    assert np.array_equal(train, expected[:n_train]) and np.array_equal(val, expected[n_train:])
    assert tok.chars == vocab


def test_cache_hit_is_identical_and_skips_training(text, tmp_path, monkeypatch):
    first = prepare(text, "bpe", 300, cache_dir=tmp_path)
    ids_file, meta_file = _entry(tmp_path)
    meta = json.loads(meta_file.read_text())
    assert meta["dtype"] == "<u2" and meta["n_tokens"] == len(first[0]) + len(first[1])
    # The second run must not train or encode at all.
    monkeypatch.setattr(BPETokenizer, "train", lambda *a: pytest.fail("trained again"))
    monkeypatch.setattr(BPETokenizer, "encode", lambda *a: pytest.fail("encoded again"))
    second = prepare(text, "bpe", 300, cache_dir=tmp_path)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[0].dtype == second[0].dtype == np.uint16
    assert second[2].to_json() == first[2].to_json()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ids_file.name, meta_file.name])


def test_cache_key_separates_text_and_tokenizer(text, tmp_path):
    prepare(text, "char", cache_dir=tmp_path)
    prepare(text[:-1], "char", cache_dir=tmp_path)
    prepare(text, "bpe", 300, cache_dir=tmp_path)
    prepare(text, "bpe", 320, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("tokens-*.bin"))) == 4


@pytest.mark.parametrize(
    "damage",
    [
        lambda ids, meta: ids.write_bytes(ids.read_bytes()[: len(ids.read_bytes()) // 2]),
        lambda ids, meta: ids.write_bytes(b"garbage"),
        lambda ids, meta: ids.unlink(),
        lambda ids, meta: meta.write_text("{truncated"),
        lambda ids, meta: meta.unlink(),
        # a flipped bit in the ids: the size is right, only the checksum can tell
        lambda ids, meta: ids.write_bytes(ids.read_bytes()[:-1] + bytes([ids.read_bytes()[-1] ^ 1])),
        lambda ids, meta: meta.write_text(json.dumps({**json.loads(meta.read_text()), "tokenizer": "{}"})),
    ],
)
def test_damaged_cache_is_rebuilt(text, tmp_path, damage, capsys, monkeypatch):
    train, val, tok = prepare(text, "char", cache_dir=tmp_path)
    first = (np.array(train), np.array(val), tok)  # copies: the damage below rewrites the file in place
    damage(*_entry(tmp_path))
    again = prepare(text, "char", cache_dir=tmp_path)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert again[2] == first[2]
    # and the entry was written afresh: a third run reads it, quietly, without encoding anything
    capsys.readouterr()
    monkeypatch.setattr(CharTokenizer, "encode", lambda *a: pytest.fail("encoded again"))
    third = prepare(text, "char", cache_dir=tmp_path)
    assert np.array_equal(first[0], third[0]) and capsys.readouterr().err == ""


def test_cache_files_appear_only_by_rename(text, tmp_path, monkeypatch):
    """Nothing is ever written at a cache path directly: readers see a whole file or none."""
    import os

    real_replace, real_encode = os.replace, CharTokenizer.encode
    renamed = []

    def encode(self, text):
        # while the ids are being written, only a hidden temporary file exists
        assert [p.name for p in tmp_path.glob("tokens-*")] == []
        assert len(list(tmp_path.glob(".tokens-*.numformer-tmp-*"))) == 1
        return real_encode(self, text)

    def replace(src, dst):
        assert os.path.dirname(src) == os.path.dirname(dst)  # same folder: rename is atomic
        assert not os.path.exists(dst)
        renamed.append(os.path.basename(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(CharTokenizer, "encode", encode)
    prepare(text, "char", cache_dir=tmp_path)
    ids_file, meta_file = _entry(tmp_path)
    assert renamed == [ids_file.name, meta_file.name]  # ids first, then the JSON vouching for them
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_processes_starting_together_agree(text, tmp_path):
    import subprocess
    import sys

    (tmp_path / "corpus.txt").write_text(text[:60_000], encoding="utf-8")
    script = (
        "import sys, hashlib, numpy as np\n"
        "from numformer.data import prepare\n"
        "text = open(sys.argv[1], encoding='utf-8').read()\n"
        "tr, va, tok = prepare(text, 'bpe', 300, cache_dir=sys.argv[2])\n"
        "print(hashlib.sha256(np.asarray(tr).tobytes() + np.asarray(va).tobytes() + tok.to_json().encode()).hexdigest())\n"
    )
    cmd = [sys.executable, "-c", script, str(tmp_path / "corpus.txt"), str(tmp_path / "cache")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    assert len({out for out, _ in outs}) == 1
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one entry, no temporary files left


def test_unwritable_cache_is_not_an_error(text, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    train, val, tok = prepare(text, "char", cache_dir=blocker / "cache")
    assert len(train) + len(val) == len(text)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("numformer: note: could not write the token cache file"), notes


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000]
    text = "".join(chars)
    train, val, tok = prepare(text, "char", cache_dir=tmp_path)
    assert tok.vocab_size == len(chars) >= 65536
    assert train.dtype == np.uint32
    assert tok.decode(np.concatenate([train, val])) == text
    again = prepare(text, "char", cache_dir=tmp_path)
    assert again[0].dtype == np.uint32 and np.array_equal(again[1], val)


def test_given_tokenizer_is_used_as_is(tmp_path):
    tok = CharTokenizer.from_text("abcdefgh \n")
    train, val, same = prepare("abc def\n" * 10, tok, cache_dir=tmp_path)
    assert same is tok
    assert np.array_equal(np.concatenate([train, val]), tok.encode("abc def\n" * 10))
    with pytest.raises(DataError, match="'x'"):
        prepare("abc xyz\n", tok, cache_dir=tmp_path)


def test_bad_tokenizer_arguments(tmp_path):
    with pytest.raises(UsageError, match="unknown tokenizer 'word'"):
        prepare("some text", "word", cache_dir=tmp_path)
    with pytest.raises(UsageError, match="vocab_size"):
        prepare("some text", "char", 100, cache_dir=tmp_path)
    with pytest.raises(UsageError, match="vocab_size 100"):
        prepare("some text", "bpe", 100, cache_dir=tmp_path)
    with pytest.raises(DataError, match="empty"):
        prepare("", "char", cache_dir=tmp_path)


# ----------------------------------------------------------------------------- get_batch


def test_get_batch_shapes_and_shift():
    ids = np.arange(1000, dtype=np.uint16) * 7 % 65
    x, y = get_batch(ids, 16, 5, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == np.int64
    ix = np.random.default_rng(0).integers(0, len(ids) - 16, size=5)  # the documented draw
    for b, i in enumerate(ix):
        assert x[b].tolist() == ids[i : i + 16].tolist()
        assert y[b].tolist() == ids[i + 1 : i + 17].tolist()
    assert np.array_equal(x[:, 1:], y[:, :-1])


def test_get_batch_is_deterministic_given_the_rng():
    ids = np.random.default_rng(1).integers(0, 50, 5000)
    a = get_batch(ids, 32, 8, np.random.default_rng(42))
    b = get_batch(ids, 32, 8, np.random.default_rng(42))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    rng = np.random.default_rng(42)
    get_batch(ids, 32, 8, rng)
    c = get_batch(ids, 32, 8, rng)  # the rng moves on: the next batch differs
    assert not np.array_equal(a[0], c[0])


def test_get_batch_uses_every_offset_up_to_the_last():
    ids = np.arange(6)
    x, y = get_batch(ids, 5, 50, np.random.default_rng(0))  # only offset 0 fits
    assert (x == np.arange(5)).all() and (y == np.arange(1, 6)).all()


def test_get_batch_too_short():
    with pytest.raises(DataError) as info:
        get_batch(np.arange(64), 64, 4, np.random.default_rng(0))
    message = str(info.value)
    assert "64 tokens" in message and "block_size 64" in message and "65" in message
    assert "\n" not in message


def test_check_length_names_both_numbers():
    train, val = np.arange(900), np.arange(100)
    check_length(train, val, 99)
    with pytest.raises(DataError) as info:
        check_length(train, val, 100)
    message = str(info.value)
    assert "val split has 100 tokens" in message and "block_size 100" in message and "101" in message
    assert "\n" not in message
    with pytest.raises(DataError, match="train split has 50 tokens"):
        check_length(train[:50], val, 60)
