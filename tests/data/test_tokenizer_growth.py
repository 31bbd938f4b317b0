"""Tokenizers whose normalizer, pre-tokenizer or decoder multiplies text are refused when they are
loaded (from a checkpoint's tokenizer.json or a Hugging Face folder), before any text meets them:
a 5 KB tokenizer.json holding a chain of doubling Replace steps made `sample`, `explore` and
`train --init_from` allocate until the process died. Real tokenizers' pipelines still load."""

import json

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from numformer.data.tokenizer import MAX_GROWTH, BPETokenizer, from_json
from numformer.errors import DataError


def _doc(normalizer=None, pre_tokenizer=None, decoder=None) -> str:
    """A numformer BPE tokenizer document with this pipeline around a three-token BPE."""
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    for name, step in (("normalizer", normalizer), ("pre_tokenizer", pre_tokenizer), ("decoder", decoder)):
        if step is not None:
            setattr(tok, name, step)
    return json.dumps({"type": "bpe", "format": 1, "hf": json.loads(tok.to_str())})


DOUBLING = [normalizers.Replace("a", "aa")] * 40


HOSTILE = {
    "normalizer-doubling-chain": dict(normalizer=normalizers.Sequence(DOUBLING)),
    "nested-sequences": dict(normalizer=normalizers.Sequence([normalizers.Sequence(DOUBLING[:20])] * 2)),
    "regex-insertions": dict(normalizer=normalizers.Sequence([normalizers.Replace(Regex(""), "ab")] * 12)),  # 3^12
    "decoder-doubling-chain": dict(decoder=decoders.Sequence([decoders.Replace("a", "aa")] * 40)),
    "byte-level-pre-tokenizers": dict(pre_tokenizer=pre_tokenizers.Sequence([pre_tokenizers.ByteLevel()] * 20)),
    "one-long-replacement": dict(normalizer=normalizers.Replace("a", "a" * 5000)),
    "normalizer-times-pre-tokenizer": dict(normalizer=normalizers.Sequence(DOUBLING[:6]),
                                           pre_tokenizer=pre_tokenizers.Sequence([pre_tokenizers.ByteLevel()] * 6)),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_pipeline_that_multiplies_text_is_refused_in_one_line(case):
    doc = _doc(**HOSTILE[case])
    assert len(doc) < 6000                     # a small file: the danger is what it does, not its size
    with pytest.raises(DataError) as e:
        from_json(doc)
    message = str(e.value)
    assert "\n" not in message and "times longer" in message and f"{MAX_GROWTH:,}" in message, message


REAL = {
    "numformer's own": dict(pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False),
                            decoder=decoders.ByteLevel()),
    "llama-2 style": dict(normalizer=normalizers.Sequence([normalizers.Prepend("▁"),
                                                           normalizers.Replace(" ", "▁")]),
                          decoder=decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])),
    "qwen2 style": dict(normalizer=normalizers.NFC(), pre_tokenizer=pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), decoder=decoders.ByteLevel()),
    "bert style": dict(normalizer=normalizers.BertNormalizer(lowercase=True),
                       pre_tokenizer=pre_tokenizers.BertPreTokenizer(), decoder=decoders.WordPiece()),
    "metaspace": dict(normalizer=normalizers.NFKC(), pre_tokenizer=pre_tokenizers.Metaspace(),
                      decoder=decoders.Metaspace()),
}


@pytest.mark.parametrize("case", REAL)
def test_the_pipelines_of_real_tokenizers_load_and_work(case):
    tok = from_json(_doc(**REAL[case]))
    assert isinstance(tok, BPETokenizer)
    tok.decode(tok.encode("ab ba aab"))


def test_a_trained_tokenizer_loads(tmp_path):
    tok = BPETokenizer.train("the cat sat on the mat " * 50, 270)
    assert from_json(tok.to_json()) == tok


@pytest.mark.parametrize("argv", [["sample", "--out_dir", "{ckpt}", "--max_new_tokens", "2"],
                                  ["convert", "--to_hf", "{ckpt}", "--out", "{tmp}/hf"],
                                  ["explore", "{ckpt}", "--out", "{tmp}/page.html"]],
                         ids=["sample", "convert", "explore"])
def test_a_checkpoint_holding_such_a_tokenizer_is_refused_in_one_line(tmp_path, capsys, argv):
    from numformer.cli import main as cli_main
    from numformer.model.config import GPTConfig
    from numformer.model.gpt import GPT

    ckpt = tmp_path / "ckpt"
    GPT(GPTConfig(vocab_size=3, block_size=8, n_layer=1, n_head=1, n_embd=4)).save(
        ckpt, tokenizer=_doc(**HOSTILE["normalizer-doubling-chain"]))
    capsys.readouterr()
    code = cli_main([a.format(ckpt=ckpt, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err, err
    assert f"{ckpt / 'tokenizer.json'}: " in err and "times longer" in err, err
