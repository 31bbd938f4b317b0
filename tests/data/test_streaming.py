"""A corpus read in pieces: the same text, the same ids and the same tokenizer as reading it whole,
ids of the smallest unsigned type read from the cache file, and paths that are not files refused."""

import os
import random
import stat
import subprocess
import sys

import numpy as np
import pytest

from numformer.data import batches, cache, corpus
from numformer.data.batches import prepare
from numformer.data.cache import id_dtype
from numformer.data.corpus import Corpus, open_corpus
from numformer.data.tokenizer import BPETokenizer, CharTokenizer
from numformer.errors import DataError


def whole(data: bytes) -> str:
    """The documented rules, applied to a whole file at once."""
    return data.decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


PARTS = ["a", "b c", "\r", "\n", "\r\n", "é", "中", "😀", "\ufeff", " ", "\n\n"]


@pytest.fixture()
def tiny_reads(monkeypatch):
    """Read 7 bytes at a time and keep pieces short, so every boundary case is met."""
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 7)
    monkeypatch.setattr(corpus, "CHUNK_CHARS", 5)


def test_file_read_in_pieces_is_the_whole_text(tmp_path, tiny_reads):
    rng = random.Random(0)
    for trial in range(200):
        text = "".join(rng.choice(PARTS) for _ in range(rng.randint(1, 40)))
        data = (b"\xef\xbb\xbf" if trial % 3 == 0 else b"") + text.encode("utf-8")
        path = tmp_path / f"{trial}.txt"
        path.write_bytes(data)
        expected = whole(data)
        if not expected.strip():
            with pytest.raises(DataError, match="only whitespace"):
                open_corpus(path).text()
            continue
        pieces = list(open_corpus(path).pieces())
        assert "".join(pieces) == expected
        assert len(pieces) > 1 or len(data) <= 7


def test_folder_read_in_pieces_is_the_whole_text(tmp_path, tiny_reads):
    rng = random.Random(1)
    for trial in range(150):
        folder = tmp_path / str(trial)
        folder.mkdir()
        texts = []
        for i in range(rng.randint(1, 4)):
            data = "".join(rng.choice(["a", "\n", "\n\n", "\r\n", "b c", ""]) for _ in range(rng.randint(0, 6)))
            (folder / f"{i}.txt").write_bytes(data.encode())
            texts.append(whole(data.encode()))
        kept = [t.rstrip("\n") for t in texts if t]
        expected = "\n\n".join(kept) + "\n" if kept else ""
        if not expected.strip():
            with pytest.raises(DataError, match="empty"):
                open_corpus(folder).text()
        else:
            assert open_corpus(folder).text() == expected


def test_non_utf8_offset_counts_across_reads(tmp_path, tiny_reads):
    path = tmp_path / "bad.txt"
    path.write_bytes("abcdé中".encode() + b"\xe4\xb8" + b"xyz")  # 4 + 2 + 3 bytes, then a character cut short
    with pytest.raises(DataError, match=r"byte 0xe4 at offset 9 "):
        open_corpus(path).text()


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "numformer", "train", "--data", str(fifo), "--out_dir",
                        str(tmp_path / "out"), "--max_iters", "1"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NUMFORMER_CACHE": str(tmp_path / "cache")})
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"numformer train: error: {fifo}: not a regular file or folder (a device, FIFO or socket cannot be a "
        "corpus); give a UTF-8 text file or a folder of .txt files"]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_is_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "numformer", "train", "--data", "/dev/zero", "--out_dir",
                        str(tmp_path / "out"), "--max_iters", "1"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NUMFORMER_CACHE": str(tmp_path / "cache")},
                       preexec_fn=_cap_memory)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "/dev/zero: not a regular file or folder" in lines[0]


def _cap_memory():
    """In the child: 4 GiB of address space, so code that reads /dev/zero fails instead of taking the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_a_fifo_swapped_in_after_the_check_is_still_refused(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("some text\n")
    c = open_corpus(path)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(DataError, match="not a regular file"):
        c.text()  # opened without blocking, then refused


# ----------------------------------------------------------------------------- ids


@pytest.mark.parametrize("V, dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                      (65537, np.uint32)])
def test_id_dtype_is_the_smallest_that_holds_every_id(V, dtype):
    assert id_dtype(V) is dtype
    assert np.iinfo(dtype).max >= V - 1


def test_vocabulary_over_256_characters_is_uint16_in_the_cache_file(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 300)]
    text = "".join(chars) * 3
    train, val, tok = prepare(text, "char", cache_dir=tmp_path)
    assert tok.vocab_size == 300
    assert train.dtype == val.dtype == np.uint16
    assert isinstance(train, cache.TokenFile) and isinstance(val, cache.TokenFile)
    (ids_file,) = tmp_path.glob("tokens-*.bin")
    assert ids_file.stat().st_size == 2 * len(text)
    assert np.array_equal(np.concatenate([train, val]), [c - 0x100 for c in map(ord, text)])


def test_char_ids_from_pieces_equal_ids_of_the_whole(tmp_path, tiny_reads, shakespeare_text):
    text = shakespeare_text[:20_000] + "é中😀\n"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    train, val, tok = prepare(open_corpus(path), "char", cache_dir=tmp_path / "cache")
    vocab = sorted(set(text))
    expected = np.array([vocab.index(c) for c in text])
    n_train = int(0.9 * len(text))
    assert tok.chars == vocab
    assert np.array_equal(train, expected[:n_train]) and np.array_equal(val, expected[n_train:])
    # the same text given whole shares the cache entry: the key is the text, not how it was read
    again = prepare(text, "char", cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("tokens-*.bin"))) == 1
    assert np.array_equal(again[0], train)


def test_bpe_from_pieces_equals_bpe_of_the_whole(tmp_path, monkeypatch, shakespeare_text):
    text = shakespeare_text[:200_000]
    whole_tok = BPETokenizer.train(text, 300)
    whole_ids = whole_tok.encode(text)
    monkeypatch.setattr(corpus, "CHUNK_CHARS", 3001)  # pieces cut anywhere, mid-word included
    pieces = Corpus.of_text(text)
    assert len(list(pieces.pieces())) > 60
    train, val, tok = prepare(pieces, "bpe", 300, cache_dir=tmp_path)
    assert tok == whole_tok
    assert np.array_equal(np.concatenate([train, val]), whole_ids)


def test_unknown_character_in_a_later_piece_is_named(tmp_path, tiny_reads):
    tok = CharTokenizer.from_text("abc \n")
    path = tmp_path / "corpus.txt"
    path.write_text("abc abc abc\nabc xbc\n")
    with pytest.raises(DataError, match=r"'x' \(U\+0078\)") as info:
        prepare(open_corpus(path), tok, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not list((tmp_path / "cache").glob(".tokens-*"))  # no temporary file left behind


def test_old_npy_entries_are_not_read(tmp_path):
    """Cache format 2 keys differ from format 1's: an old .npy entry is neither read nor touched."""
    text = "hello world\n" * 50
    old = tmp_path / "tokens-0123456789abcdef0123456789abcdef.npy"
    old.write_bytes(b"old entry")
    train, val, tok = prepare(text, "char", cache_dir=tmp_path)
    assert old.read_bytes() == b"old entry"
    assert cache.CACHE_FORMAT == 2
    assert len(train) + len(val) == len(text)


def test_ids_file_is_written_in_pieces(tmp_path, monkeypatch, tiny_reads):
    """No array of the whole corpus's ids is ever made: each write holds one piece's ids."""
    sizes = []
    real = batches.encode_pieces

    def spy(*args):
        for part in real(*args):
            sizes.append(len(part))
            yield part

    monkeypatch.setattr(batches, "encode_pieces", spy)
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be\n" * 20)
    train, val, _ = prepare(open_corpus(path), "char", cache_dir=tmp_path / "cache")
    assert max(sizes) <= 8 and sum(sizes) == len(train) + len(val) == 20 * 19
    assert stat.S_ISREG(os.stat(train.path).st_mode)
