"""The Llama family's tokenizers as numformer's BPETokenizer: Llama 3's and Qwen2's byte-level BPE,
Llama 2's "▁" BPE with byte fallback. A long text or a corpus read in pieces must give exactly the
ids of the whole text as `tokenizers` encodes it; `special_prefix` is what the tokenizer's
post-processor puts before a text; the roles of special tokens travel in the JSON document.
(Against transformers' AutoTokenizer: tests/interop/test_llama_tokenizer.py.)"""

import json

import numpy as np
import pytest
import tokenizers

from numformer.data.batches import encode_pieces
from numformer.data.corpus import Corpus
from numformer.data.tokenizer import NEWLINE_CUT, REGEX_CUT, BPETokenizer, from_json
from numformer.errors import DataError
from numformer.reference.llama_tokenizers import byte_level_bpe, metaspace_bpe
from tests.helpers import TEXT, one_line

# Leading, repeated and trailing spaces, tabs, CR LF, accents, CJK, emoji (not in the trained
# vocabularies: bytes), a special token's text, lines that start with a space or a symbol.
VARIED = ("  two leading spaces\n\ttab\r\nnaïve cafe\u0301 — 你好，世界！ 😀👩\u200d💻 end  \n\n   x\n"
          "Speak, speak.</s> after\n <s>x\n-dash\nI'm 12345 don't\n")


def hf_doc(tok: tokenizers.Tokenizer) -> dict:
    return json.loads(tok.to_str())


@pytest.fixture(scope="module")
def kinds():
    """Each kind, with the cut rule it must get."""
    with_newline_merges = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>", byte_fallback=True))
    with_newline_merges.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(split=False)
    with_newline_merges.train_from_iterator([TEXT], tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], show_progress=False))
    return {
        "llama3": (byte_level_bpe(TEXT, 400, "llama3"), REGEX_CUT),
        "qwen2": (byte_level_bpe(TEXT, 400, "qwen2"), REGEX_CUT),
        "llama2": (metaspace_bpe(TEXT, 600, "metaspace"), NEWLINE_CUT),
        "tinyllama": (metaspace_bpe(TEXT, 600, "normalizer"), NEWLINE_CUT),
        "newline merges": (with_newline_merges, None),   # "\n" merges: no safe cut, encoded whole
    }


KINDS = ["llama3", "qwen2", "llama2", "tinyllama", "newline merges"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_long_text_gives_the_ids_of_the_whole_text(kinds, kind):
    hf, rule = kinds[kind]
    tok = BPETokenizer.from_hf_document(hf_doc(hf))
    assert tok._cut == rule
    text = (TEXT + VARIED) * 120                         # about 600,000 characters: cut into pieces
    assert len(text) > 8 * 65536
    whole = hf.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(tok.encode(text), whole)
    assert tok.decode(tok.encode(VARIED)) == hf.decode(hf.encode(VARIED, add_special_tokens=False).ids,
                                                         skip_special_tokens=False)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1, 7, 4096, 100_000])
def test_a_corpus_read_in_pieces_gives_the_ids_of_the_whole_text(kinds, kind, size):
    hf, _ = kinds[kind]
    tok = BPETokenizer.from_hf_document(hf_doc(hf))
    text = (VARIED + TEXT) * 8
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    got = np.concatenate(list(encode_pieces(Corpus("corpus", lambda: iter(pieces)), tok, np.int64)))
    np.testing.assert_array_equal(got, hf.encode(text, add_special_tokens=False).ids)


def test_special_prefix_is_what_the_post_processor_puts_before_a_text(kinds):
    for kind, bos in (("llama3", "<|begin_of_text|>"), ("llama2", "<s>"), ("tinyllama", "<s>")):
        hf, _ = kinds[kind]
        tok = BPETokenizer.from_hf_document(hf_doc(hf))
        assert tok.special_prefix.tolist() == [hf.token_to_id(bos)]
        assert tok.special_prefix.tolist() + tok.encode("Speak").tolist() == hf.encode("Speak").ids
        assert bos not in tok.decode(tok.encode("Speak"))            # encode itself never adds it
    assert BPETokenizer.from_hf_document(hf_doc(kinds["qwen2"][0])).special_prefix.tolist() == []
    assert BPETokenizer.train(TEXT, 300).special_prefix.tolist() == []


def test_roles_of_special_tokens_travel_in_the_json(kinds):
    hf, _ = kinds["llama2"]
    tok = BPETokenizer.from_hf_document(hf_doc(hf), {"eos_token": "</s>", "bos_token": "<s>"})
    assert tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    back = from_json(tok.to_json())
    assert back == tok and back.special_tokens == tok.special_tokens
    assert back.token_id("</s>") == 2
    assert back != BPETokenizer.from_hf_document(hf_doc(hf))        # the roles are part of the tokenizer


@pytest.mark.parametrize("roles, says", [
    ({"cls_token": "<s>"}, "unknown role 'cls_token'"),
    ({"eos_token": "<|nope|>"}, "eos_token '<|nope|>' is not a token of the tokenizer"),
    ({"eos_token": 2}, "eos_token 2 is not a token"),
    (["<s>"], "must be an object"),
])
def test_bad_roles_in_a_checkpoint_are_one_line(kinds, roles, says):
    doc = json.loads(BPETokenizer.from_hf_document(hf_doc(kinds["llama2"][0])).to_json())
    doc["special_tokens"] = roles
    with pytest.raises(DataError) as e:
        from_json(json.dumps(doc))
    assert says in one_line(e)
