import json

import numpy as np
import pytest

from numformer.data import tokenizer as tk
from numformer.data.tokenizer import BPETokenizer, CharTokenizer, check_fits, from_json
from numformer.errors import DataError, UsageError
from tests.helpers import DEEP, one_line

CHINESE = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n"
# Things byte-level BPE must carry through exactly: leading and repeated spaces, tabs, CR LF,
# accents (composed and combining), CJK, emoji (4-byte UTF-8), a zero-width joiner, NUL.
UNICODE = "  two leading spaces\n\ttab\r\nnaïve cafe\u0301 — 你好，世界！ 😀👩\u200d💻 \x00end  \n\n   "


@pytest.fixture(scope="session")
def sample(shakespeare_text):
    """About 200 KB of the built-in corpus: enough to learn real merges, quick to train on."""
    return shakespeare_text[:200_000]


@pytest.fixture(scope="session")
def bpe(sample):
    return BPETokenizer.train(sample, 400)


# ----------------------------------------------------------------------------- char


def test_char_vocab_and_ids_are_sorted_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 8
    ids = tok.encode("hello")
    assert ids.dtype == np.int64
    assert ids.tolist() == [3, 2, 4, 4, 5]


def test_char_round_trip(sample):
    tok = CharTokenizer.from_text(sample)
    ids = tok.encode(sample)
    vocab = sorted(set(sample))
    expected = [vocab.index(c) for c in sample[:500]]
    assert ids[:500].tolist() == expected
    assert tok.decode(ids) == sample
    assert tok.decode(ids.astype(np.uint16)) == sample


def test_char_round_trip_chinese():
    tok = CharTokenizer.from_text(CHINESE)
    assert tok.vocab_size == len(set(CHINESE))
    assert tok.decode(tok.encode(CHINESE)) == CHINESE
    assert tok.decode(tok.encode("明月")) == "明月"


def test_char_round_trip_beyond_the_basic_plane():
    text = "a😀b\U0010fffd\n"
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("😀").tolist() == [sorted(set(text)).index("😀")]


def test_char_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError) as info:
        tok.encode("cab!")
    message = str(info.value)
    assert "'!'" in message and "U+0021" in message and "position 3" in message
    with pytest.raises(DataError, match=r"U\+660E"):
        tok.encode("明")
    with pytest.raises(DataError, match=r"'z'.*U\+007A"):
        tok.encode("z")  # larger than every code point in the vocabulary


def test_char_decode_rejects_ids_outside_the_vocabulary():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match="token id 3"):
        tok.decode([0, 3])


def test_char_json_round_trip():
    tok = CharTokenizer.from_text(CHINESE + "abc\n\"\\")
    doc = json.loads(tok.to_json())
    assert doc["type"] == "char"
    again = from_json(tok.to_json())
    assert isinstance(again, CharTokenizer) and again == tok
    assert np.array_equal(again.encode(CHINESE), tok.encode(CHINESE))


# ----------------------------------------------------------------------------- BPE


def test_bpe_vocab_size_and_compression(bpe, sample):
    assert bpe.vocab_size == 400
    ids = bpe.encode(sample)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 400
    assert len(ids) < 0.7 * len(sample)  # merges were really learned


def test_bpe_round_trip_shakespeare(bpe, shakespeare_text):
    part = shakespeare_text[-50_000:]  # text it was not trained on
    assert bpe.decode(bpe.encode(part)) == part


@pytest.mark.parametrize("text", [UNICODE, CHINESE, " leading", "   ", "", "\n", "x"])
def test_bpe_round_trip_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_trained_on_chinese_round_trips():
    text = CHINESE * 20 + "春眠不觉晓，处处闻啼鸟。\n"
    tok = BPETokenizer.train(text, 300)
    ids = tok.encode(text)
    assert len(ids) < len(text.encode("utf-8"))  # merged some bytes
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("夜来风雨声，花落知多少。")) == "夜来风雨声，花落知多少。"


def test_bpe_chunked_encoding_equals_whole(sample):
    # Long texts are encoded in chunks (for speed). A cut inside a whitespace run such as
    # "  \n  " would change GPT-2's pre-tokens and so the ids; train on text full of such runs so
    # that merges of whitespace exist and a careless cut would show.
    rng = np.random.default_rng(0)
    words = sample[:30_000].split()
    seps = ["\n", "  \n  ", " \n", "\n ", "\n\n", "\t\n", " ", "  "]
    text = "".join(w + seps[i] for w, i in zip(words, rng.integers(0, len(seps), len(words))))
    tok = BPETokenizer.train(text, 400)
    whole = tok._tok.encode(text, add_special_tokens=False).ids
    chunks = tk.chunks(text, 300)
    assert len(chunks) > 50 and "".join(chunks) == text
    for a, b in zip(chunks, chunks[1:]):
        assert a[-2:-1].strip() and a[-1] == "\n" and b[0].strip(), (a[-5:], b[:5])
    assert [i for c in chunks for i in tok._tok.encode(c, add_special_tokens=False).ids] == whole
    long = text * (tk.CHUNK_CHARS // len(text) + 2)  # longer than a chunk: encode() cuts it itself
    assert tok.encode(long).tolist() == tok._tok.encode(long, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text


def test_bpe_json_round_trip(bpe, sample):
    doc = json.loads(bpe.to_json())
    assert doc["type"] == "bpe" and doc["hf"]["model"]["type"] == "BPE"
    again = from_json(bpe.to_json())
    assert isinstance(again, BPETokenizer) and again.vocab_size == bpe.vocab_size
    for text in (sample[:5000], UNICODE, CHINESE):
        assert np.array_equal(again.encode(text), bpe.encode(text))
        assert again.decode(bpe.encode(text)) == text


def test_bpe_training_is_deterministic(sample):
    a = BPETokenizer.train(sample[:50_000], 300)
    b = BPETokenizer.train(sample[:50_000], 300)
    assert a.to_json() == b.to_json()


@pytest.mark.parametrize("bad", [0, 100, 256, "512", 512.0, None, True])
def test_bpe_bad_vocab_size(bad):
    with pytest.raises(UsageError, match="vocab_size"):
        BPETokenizer.train("some text", bad)


# ----------------------------------------------------------------------------- from_json errors


@pytest.mark.parametrize(
    "doc, words",
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "object"),
        ('{"chars": ["a"]}', "unknown type None"),
        ('{"type": "wordpiece"}', "unknown type 'wordpiece'"),
        ('{"type": "char", "format": 99, "chars": ["a"]}', "format 99"),
        ('{"type": "char"}', "chars"),
        ('{"type": "char", "chars": ["b", "a"]}', "sorted"),
        ('{"type": "char", "chars": ["ab"]}', "single characters"),
        ('{"type": "char", "chars": []}', "at least one"),
        ('{"type": "bpe"}', "hf"),
        ('{"type": "bpe", "hf": {"model": {"type": "WordPiece"}}}', "not a BPE"),
        ('{"type": "bpe", "hf": {"model": {"type": "BPE", "vocab": 3}}}', "model.vocab: expected a JSON object"),
    ],
)
def test_from_json_errors_are_one_clear_line(doc, words):
    with pytest.raises(DataError) as info:
        from_json(doc)
    message = str(info.value)
    assert words in message and "\n" not in message


# ------------------------------------------- crafted tokenizer documents (they used to crash)


def test_tokenizer_json_nested_200000_deep_is_a_data_error():
    with pytest.raises(DataError) as e:
        from_json("[" * DEEP + "]" * DEEP)
    assert "nested too deeply" in one_line(e)


@pytest.mark.parametrize("chars", [["a", "\ud800"], ["\udcff"]])
def test_a_tokenizer_with_a_lone_surrogate_is_refused(chars):
    with pytest.raises(DataError) as e:
        from_json(json.dumps({"type": "char", "format": 1, "chars": chars}))
    assert "lone surrogate" in one_line(e)


def test_a_tokenizer_larger_than_the_model_does_not_fit():
    tok = CharTokenizer.from_text("abcdef")
    check_fits(tok, 6, "here")            # equal: fine
    with pytest.raises(DataError) as e:
        check_fits(tok, 5, "ckpt")
    assert "6 tokens" in one_line(e) and "5" in str(e.value)


def test_unknown_characters_are_all_named_up_to_five_with_a_count():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(DataError) as e:
        tok.encode("abc xyz")
    msg = one_line(e)
    assert "3 characters" in msg and all(repr(c) in msg for c in "xyz"), msg
    with pytest.raises(DataError) as e:
        tok.encode("a1234567")
    msg = one_line(e)
    assert "7 characters" in msg and "and 2 more" in msg and "'5'" in msg and "'6'" not in msg, msg
    with pytest.raises(DataError) as e:
        tok.encode("aqq")
    assert "character 'q'" in str(e.value) and "2 occurrences" in str(e.value)


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
    message = one_line(e)
    assert all(w in message for w in words), message
    assert "panicked" not in capfd.readouterr().err
