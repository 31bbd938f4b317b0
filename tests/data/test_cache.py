"""The token cache trusts an entry only when it is this corpus's, made with this tokenizer, and
whole; it writes through the checkpoint module's atomic writer; a cache file cut short while a run
reads it is one line, never a crash."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from numformer import checkpoint
from numformer.data import cache
from numformer.data.batches import get_batch, prepare
from numformer.data.tokenizer import CharTokenizer

A = "the king shall not be my lord\n" * 40
B = "XYZ? qwv, jjj!\n" * 80


def _entry(folder):
    (ids,) = folder.glob("tokens-*.bin")
    (meta,) = folder.glob("tokens-*.json")
    return ids, meta


def _expected_char_ids(text):
    vocab = sorted(set(text))
    return np.array([vocab.index(c) for c in text]), vocab


def _copy_entry_over(src_folder, dst_folder):
    """Put the entry of src_folder under the file names of dst_folder's entry."""
    src_ids, src_meta = _entry(src_folder)
    dst_ids, dst_meta = _entry(dst_folder)
    shutil.copyfile(src_ids, dst_ids)
    shutil.copyfile(src_meta, dst_meta)


def _one_note(capsys, *words):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- whose entry it is


def test_an_entry_of_another_corpus_is_rebuilt_with_a_note(tmp_path, capsys):
    prepare(A, "char", cache_dir=tmp_path / "a")
    prepare(B, "char", cache_dir=tmp_path / "b")
    _copy_entry_over(tmp_path / "a", tmp_path / "b")
    capsys.readouterr()
    train, val, tok = prepare(B, "char", cache_dir=tmp_path / "b")
    expected, vocab = _expected_char_ids(B)
    assert tok.chars == vocab
    assert np.array_equal(np.concatenate([train, val]), expected)
    _one_note(capsys, str(_entry(tmp_path / "b")[1]), "another text", "rebuilt")
    # rebuilt in place: the next run reads it without a note
    again = prepare(B, "char", cache_dir=tmp_path / "b")
    assert np.array_equal(np.concatenate([again[0], again[1]]), expected)
    assert capsys.readouterr().err == ""


def test_an_entry_of_another_tokenizer_is_rebuilt(tmp_path, capsys):
    """The same text, char ids filed under the BPE key: the text's hash matches, the spec does not."""
    prepare(A, "char", cache_dir=tmp_path / "char")
    prepare(A, "bpe", 300, cache_dir=tmp_path / "bpe")
    bpe_ids = np.array(np.concatenate(prepare(A, "bpe", 300, cache_dir=tmp_path / "bpe")[:2]))
    _copy_entry_over(tmp_path / "char", tmp_path / "bpe")
    capsys.readouterr()
    train, val, tok = prepare(A, "bpe", 300, cache_dir=tmp_path / "bpe")
    assert tok.kind == "bpe"
    assert np.array_equal(np.concatenate([train, val]), bpe_ids)
    _one_note(capsys, "another tokenizer", "rebuilt")


def test_an_entry_for_another_given_tokenizer_is_rebuilt(tmp_path, capsys):
    """A checkpoint's tokenizer (resume, --init_from): the ids must be this tokenizer's."""
    small = CharTokenizer.from_text(A)
    large = CharTokenizer.from_text(A + "QZ")
    prepare(A, small, cache_dir=tmp_path / "small")
    prepare(A, large, cache_dir=tmp_path / "large")
    _copy_entry_over(tmp_path / "small", tmp_path / "large")
    capsys.readouterr()
    train, val, tok = prepare(A, large, cache_dir=tmp_path / "large")
    assert tok is large
    assert np.array_equal(np.concatenate([train, val]), large.encode(A))
    _one_note(capsys, "another tokenizer")


def test_a_recorded_hash_that_disagrees_with_the_key_is_stale(tmp_path, capsys):
    """An entry whose own record names another text is not trusted, even with the right ids."""
    prepare(A, "char", cache_dir=tmp_path)
    _, meta_file = _entry(tmp_path)
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "text_sha256": "0" * 64}))
    capsys.readouterr()
    train, val, _ = prepare(A, "char", cache_dir=tmp_path)
    assert np.array_equal(np.concatenate([train, val]), _expected_char_ids(A)[0])
    _one_note(capsys, "another text")
    assert json.loads(meta_file.read_text())["text_sha256"] == meta["text_sha256"]


# ----------------------------------------------------------------------------- damaged records


@pytest.mark.parametrize("record", [
    "[" * 100_000 + "]" * 100_000,                              # nested past Python's recursion limit
    '{"cache_format": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"cache_format": 2, "n_tokens": ' + "9" * 5000 + "}",       # past int()'s 4,300 digits
    "\xff\xfe not utf-8",
    '"a string"',
    '{"cache_format": 2, "dtype": {"a": 1}, "n_tokens": 1}',
    "NaN",
])
def test_a_damaged_record_is_rebuilt_not_a_traceback(tmp_path, capsys, record):
    prepare(A, "char", cache_dir=tmp_path)
    _, meta_file = _entry(tmp_path)
    meta_file.write_bytes(record.encode("latin-1") if record.startswith("\xff") else record.encode())
    capsys.readouterr()
    train, val, tok = prepare(A, "char", cache_dir=tmp_path)
    assert np.array_equal(np.concatenate([train, val]), _expected_char_ids(A)[0])
    _one_note(capsys, str(meta_file), "rebuilt")
    assert json.loads(meta_file.read_text())["n_tokens"] == len(A)


def test_an_entry_being_written_is_a_plain_miss(tmp_path, capsys):
    """Ids without their record (another process is between its two renames): rebuilt quietly."""
    prepare(A, "char", cache_dir=tmp_path)
    _, meta_file = _entry(tmp_path)
    meta_file.unlink()
    capsys.readouterr()
    prepare(A, "char", cache_dir=tmp_path)
    assert capsys.readouterr().err == ""


def test_ids_that_cannot_be_read_are_stale_not_an_error(tmp_path, capsys, monkeypatch):
    """An I/O error while the ids are checked (a failing disk) is the cache's problem: rebuilt."""
    prepare(A, "char", cache_dir=tmp_path)
    real = cache._sha256_of
    calls = []

    def failing(file):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        return real(file)

    monkeypatch.setattr(cache, "_sha256_of", failing)
    capsys.readouterr()
    train, val, _ = prepare(A, "char", cache_dir=tmp_path)
    assert np.array_equal(np.concatenate([train, val]), _expected_char_ids(A)[0])
    _one_note(capsys, "Input/output error", "rebuilt")


# ----------------------------------------------------------------------------- one writer


def test_cache_files_go_through_the_checkpoint_writer(tmp_path, monkeypatch):
    written = []
    real = checkpoint.replace_file

    def spy(path, data):
        written.append(path.name)
        return real(path, data)

    monkeypatch.setattr(checkpoint, "replace_file", spy)
    prepare(A, "char", cache_dir=tmp_path)
    ids_file, meta_file = _entry(tmp_path)
    assert written == [ids_file.name, meta_file.name]      # ids first, then the record vouching for them
    cache.write_cached_text(tmp_path / "text.txt", "some text")
    assert written[-1] == "text.txt"
    assert cache.read_cached_text(tmp_path / "text.txt") == "some text"


def test_the_ids_are_streamed_to_the_writer(tmp_path, monkeypatch):
    """The writer gets the ids piece by piece, never one bytes object of the whole corpus."""
    from numformer.data import corpus

    monkeypatch.setattr(corpus, "CHUNK_CHARS", 100)
    parts = []
    real = checkpoint.replace_file

    def spy(path, data):
        if path.suffix == ".bin":
            assert not isinstance(data, bytes)
            data = list(data)
            parts.extend(len(p) for p in data)
        return real(path, data)

    monkeypatch.setattr(checkpoint, "replace_file", spy)
    prepare(A, "char", cache_dir=tmp_path)
    assert max(parts) <= 100 and sum(parts) == len(A)


# ----------------------------------------------------------------------------- reading windows


def test_batches_from_the_cache_file_equal_batches_from_memory(tmp_path):
    train, val, _ = prepare(A * 10, "char", cache_dir=tmp_path)
    for ids in (train, val):
        in_memory = np.array(ids)
        for seed in range(3):
            a = get_batch(ids, 16, 7, np.random.default_rng(seed))
            b = get_batch(in_memory, 16, 7, np.random.default_rng(seed))
            assert a[0].dtype == b[0].dtype == np.int64
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _run_child(script, *args, timeout=300):
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


CUT_WHILE_READING = """
import sys
from pathlib import Path
import numpy as np
from numformer.data.batches import prepare, get_batch
from numformer.errors import DataError
cache = Path(sys.argv[1])
train, val, tok = prepare("the king shall not be my lord\\n" * 400, "char", cache_dir=cache)
get_batch(train, 16, 4, np.random.default_rng(0))
(ids,) = cache.glob("tokens-*.bin")
with open(ids, "r+b") as f:
    f.truncate(100)                      # another program cuts the file while the run reads it
try:
    for seed in range(50):
        get_batch(train, 16, 4, np.random.default_rng(seed))
except DataError as e:
    print(e)
    sys.exit(3)
print("no error")
"""


def test_a_cache_file_cut_short_while_read_is_one_line(tmp_path):
    r = _run_child(CUT_WHILE_READING, tmp_path / "cache")
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)   # not killed by SIGBUS (-7)
    (line,) = r.stdout.strip().splitlines()
    assert "tokens-" in line and "cut short" in line


TRAIN_THEN_CUT = """
import sys
from pathlib import Path
from numformer.cli import main
from numformer.training import loop

cache = Path(sys.argv[2])
real_save = loop.Trainer.save

def save(self, path):
    real_save(self, path)
    if path.name == "latest":              # the first checkpoint is written: now cut the ids
        for ids in cache.glob("tokens-*.bin"):
            with open(ids, "r+b") as f:
                f.truncate(10)

loop.Trainer.save = save
sys.exit(main(["train", "--data", sys.argv[1], "--out_dir", sys.argv[3], "--cache_dir", sys.argv[2],
               "--max_iters", "20", "--eval_interval", "10", "--eval_iters", "1", "--n_layer", "1",
               "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
               "--sample_tokens", "0", "--no_plot"]))
"""


def test_a_run_whose_cache_is_cut_stops_in_one_line_and_keeps_its_checkpoint(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(A * 20)
    r = _run_child(TRAIN_THEN_CUT, corpus, tmp_path / "cache", tmp_path / "out")
    assert r.returncode == 1, (r.returncode, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("numformer train: error: ") and "cut short" in last, r.stderr
    assert f"kept in {tmp_path / 'out' / 'latest'}" in last, last
    assert "Traceback" not in r.stderr
    ckpt = checkpoint.load_checkpoint(tmp_path / "out" / "latest")
    assert ckpt.config["train"]["iter_num"] == 0


FIFO_RECORD = """
import os, sys
from pathlib import Path
from numformer.data.batches import prepare
cache = Path(sys.argv[1])
text = "the king shall not be my lord\\n" * 40
prepare(text, "char", cache_dir=cache)
(meta,) = cache.glob("tokens-*.json")
meta.unlink()
os.mkfifo(meta)                          # a record that is not a file: reading it would wait forever
train, val, tok = prepare(text, "char", cache_dir=cache)
print(len(train) + len(val), meta.is_file())
"""


def test_a_record_that_is_not_a_regular_file_is_rebuilt_without_blocking(tmp_path):
    r = _run_child(FIFO_RECORD, tmp_path / "cache", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(A)), "True"]
    assert "not a regular file" in r.stderr and "rebuilt" in r.stderr


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMFORMER_CACHE", str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c"
    prepare("hello world, hello numformer\n" * 20, "char")
    assert len(list((tmp_path / "c").glob("tokens-*.bin"))) == 1
    monkeypatch.delenv("NUMFORMER_CACHE")
    assert str(cache.default_cache_dir()).endswith(".cache/numformer")
