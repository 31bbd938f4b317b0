"""A Llama-family folder's tokenizer as numformer applies it, against transformers' AutoTokenizer
on the same folder: the ids of varied text (the BOS transformers adds included: numformer's
special_prefix), and the text decoded from them. Then the files export writes, which
AutoTokenizer must read to the same ids, and the tokenizer files numformer leaves out."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from numformer.data.tokenizer import BPETokenizer, from_json
from numformer.errors import CheckpointError
from numformer.interop.hf_tokenizer import export_tokenizer_files, read_hf_tokenizer
from numformer.reference.llama_tokenizers import byte_level_bpe, metaspace_bpe, tokenizer_config
from tests.helpers import TEXT, one_line

SAMPLES = [
    "Hello world", "First Citizen:\nBefore we proceed any further, hear me speak.", " leading space",
    "  two leading spaces", "trailing space ", " ", "", "line one\nline two\n\nthree\r\nfour\n",
    "\n\nstarts with newlines", "我爱自然语言处理。床前明月光", "emoji 🙂🚀 and 👩\u200d💻 done", "tabs\tand  double  spaces",
    "naïve café — cafe\u0301", "ｆｕｌｌ\u3000ｗｉｄｔｈ Å", "don't 12345 I'm 3.14159", "Speak, speak.</s> after",
    "<s>Hi", "<|endoftext|>x<|im_start|>", "<|begin_of_text|>a",
]

# (model_type, tokenizer maker, tokenizer_config kind, changes to tokenizer_config or None for no file)
FOLDERS = {
    "llama3": ("llama", lambda: byte_level_bpe(TEXT, 400, "llama3"), "llama3", {}),
    "qwen2": ("qwen2", lambda: byte_level_bpe(TEXT, 400, "qwen2"), "qwen2", {}),
    "llama2": ("llama", lambda: metaspace_bpe(TEXT, 600, "metaspace"), "llama2", {}),
    "tinyllama": ("llama", lambda: metaspace_bpe(TEXT, 600, "normalizer"), "llama2", {}),   # rebuilt by transformers
    "llama2 legacy": ("llama", lambda: metaspace_bpe(TEXT, 600, "normalizer"), "llama2", {"legacy": True}),
    "llama2 no prefix space": ("llama", lambda: metaspace_bpe(TEXT, 600), "llama2", {"add_prefix_space": False}),
    "llama2 add_bos_token false": ("llama", lambda: metaspace_bpe(TEXT, 600), "llama2", {"add_bos_token": False}),
    "llama2 without tokenizer_config": ("llama", lambda: metaspace_bpe(TEXT, 600, "normalizer"), "llama2", None),
    "mistral": ("mistral", lambda: metaspace_bpe(TEXT, 600, "normalizer"), "llama2", {}),    # applied as it is
    "llama3 as LlamaTokenizerFast": ("llama", lambda: byte_level_bpe(TEXT, 400), "llama3",
                                     {"tokenizer_class": "LlamaTokenizerFast"}),
    "qwen2 without tokenizer_config": ("qwen2", lambda: byte_level_bpe(TEXT, 400, "qwen2"), "qwen2", None),
}


def write_folder(folder, model_type, tok, kind, changes):
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    if changes is not None:
        config = tokenizer_config(tok, kind)
        config.update(changes)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type, "vocab_size": tok.get_vocab_size(), "hidden_size": 8, "num_attention_heads": 2,
        "num_hidden_layers": 1, "intermediate_size": 16}))
    return folder


def assert_same_as_transformers(folder, tok):
    hf = AutoTokenizer.from_pretrained(str(folder))
    for text in SAMPLES:
        theirs = hf(text)["input_ids"]
        assert np.concatenate([tok.special_prefix, tok.encode(text)]).tolist() == theirs, text
        assert tok.decode(np.array(theirs)) == hf.decode(theirs), text
    return hf


@pytest.mark.parametrize("name", FOLDERS)
def test_ids_and_text_are_those_of_transformers(name, tmp_path):
    model_type, make, kind, changes = FOLDERS[name]
    folder = write_folder(tmp_path / "hf", model_type, make(), kind, changes)
    text, note = read_hf_tokenizer(folder, model_type, vocab_size=10_000)
    assert note is None
    tok = from_json(text)
    hf = assert_same_as_transformers(folder, tok)
    assert tok.vocab_size == len(hf)
    assert tok.special_tokens.get("eos_token") == hf.eos_token


def test_the_choices_transformers_makes_show_in_the_ids(tmp_path):
    """What the cases above stand for: TinyLlama's own file puts "▁▁" before a text that starts
    with a space, LlamaTokenizer as transformers 5 builds it one "▁"; Mistral keeps the file's."""
    tok = metaspace_bpe(TEXT, 600, "normalizer")
    as_written = tok.encode(" Speak", add_special_tokens=False).tokens
    llama = from_json(read_hf_tokenizer(write_folder(tmp_path / "l", "llama", tok, "llama2", {}), "llama", 10_000)[0])
    mistral = from_json(read_hf_tokenizer(write_folder(tmp_path / "m", "mistral", tok, "llama2", {}), "mistral",
                                          10_000)[0])
    assert as_written[:2] == ["▁", "▁"]
    assert mistral.encode(" Speak").tolist() == tok.encode(" Speak", add_special_tokens=False).ids
    assert llama.encode(" Speak").tolist() == tok.encode("Speak", add_special_tokens=False).ids


@pytest.mark.parametrize("name", ["llama3", "qwen2", "llama2", "tinyllama", "mistral"])
def test_export_writes_files_that_transformers_reads_to_the_same_ids(name, tmp_path):
    model_type, make, kind, changes = FOLDERS[name]
    folder = write_folder(tmp_path / "hf", model_type, make(), kind, changes)
    tok = from_json(read_hf_tokenizer(folder, model_type, 10_000)[0])
    exported_type = "qwen2" if model_type == "qwen2" else "llama"      # a Mistral is exported as a Llama
    files, ids, notes = export_tokenizer_files(tok.to_json(), exported_type)
    assert notes == []
    out = tmp_path / "export"
    out.mkdir()
    for file, blob in files.items():
        (out / file).write_bytes(blob)
    (out / "config.json").write_text(json.dumps({"model_type": exported_type, "vocab_size": tok.vocab_size,
                                                 **ids}))
    hf = assert_same_as_transformers(out, tok)
    assert ids["eos_token_id"] == hf.eos_token_id and ids["bos_token_id"] == hf.bos_token_id
    assert from_json(read_hf_tokenizer(out, exported_type, 10_000)[0]) == tok     # and back, unchanged


def test_export_of_a_character_tokenizer_and_of_none():
    files, ids, notes = export_tokenizer_files('{"type": "char", "format": 1, "chars": ["a", "b"]}', "llama")
    assert list(files) == ["numformer_tokenizer.json"] and "no Hugging Face equivalent" in notes[0]
    assert export_tokenizer_files(None, "llama") == ({}, {"bos_token_id": None, "eos_token_id": None},
                                                     ["the checkpoint has no tokenizer; the export has none either"])


@pytest.mark.parametrize("case, says", [
    ("GPT2Tokenizer class", "names tokenizer_class GPT2Tokenizer, which transformers applies in a way numformer does "
                            "not reproduce"),
    ("wrong added id", "added_tokens_decoder['5'] gives '<s>' the id 5, but the tokenizer has it at 1"),
    ("bad special", "eos_token must be a token (text), found 7"),
    ("legacy text", "legacy must be true, false or null, found 'no'"),
    ("unigram", "holds a Unigram model, not BPE"),
    ("too large", "has 435 tokens but the model only 100"),
    ("not json", "tokenizer.json: invalid JSON"),
])
def test_tokenizer_files_that_cannot_be_used_are_left_out_with_a_note(case, says, tmp_path):
    tok = metaspace_bpe(TEXT, 600)
    folder = write_folder(tmp_path / "hf", "llama", tok, "llama2", {})
    config = json.loads((folder / "tokenizer_config.json").read_text())
    vocab_size = 10_000
    if case == "GPT2Tokenizer class":
        config["tokenizer_class"] = "GPT2Tokenizer"
    elif case == "wrong added id":
        config["added_tokens_decoder"]["5"] = config["added_tokens_decoder"].pop("1")
    elif case == "bad special":
        config["eos_token"] = 7
    elif case == "legacy text":
        config["legacy"] = "no"
    elif case == "unigram":
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    elif case == "too large":
        vocab_size = 100
    elif case == "not json":
        (folder / "tokenizer.json").write_text("{")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    text, note = read_hf_tokenizer(folder, "llama", vocab_size)
    assert text == "null"
    assert says in note and note.endswith("; the checkpoint stores no tokenizer") and "\n" not in note


def test_a_tokenizer_numformer_trained_exports_as_a_llama_that_transformers_reads_alike(tmp_path):
    tok = BPETokenizer.train(TEXT, 300)
    files, ids, notes = export_tokenizer_files(tok.to_json(), "llama")
    assert notes == [] and ids == {"bos_token_id": None, "eos_token_id": None}
    out = tmp_path / "export"
    out.mkdir()
    for file, blob in files.items():
        (out / file).write_bytes(blob)
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": tok.vocab_size}))
    assert_same_as_transformers(out, tok)


def test_a_tokenizer_that_is_not_qwen2s_is_not_exported_as_a_qwen2():
    tok = from_json(BPETokenizer.train(TEXT, 300).to_json())
    with pytest.raises(CheckpointError) as e:
        export_tokenizer_files(tok.to_json(), "qwen2")
    assert "transformers gives every Qwen2 folder's tokenizer.json Qwen2's own pipeline" in one_line(e)
