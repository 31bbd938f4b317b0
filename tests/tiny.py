"""A tiny trained run that several command-line and training tests start from: a word-salad
corpus and ten steps of a one-layer GPT."""

import os

import numpy as np

from numformer.training import run

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, eval_interval=5, eval_iters=1,
            warmup_iters=2, sample_tokens=0)


def make_lab(root):
    """root/corpus.txt, root/run (a finished 10-step run) and root/cache; returns root."""
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "shall", "not", "be", "my", "lord"]
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, size=8)) for _ in range(400)) + "\n")
    run(dict(TINY, max_iters=10, data=str(root / "corpus.txt"), out_dir=str(root / "run")),
        cache_dir=root / "cache", plot=False, out=open(os.devnull, "w"))
    return root


def make_sentence_folder(folder):
    """A tiny BERT sentence-transformers folder (random weights, a 7-word vocabulary: a, b, c and
    BERT's specials), written with transformers; returns folder."""
    import json

    import pytest

    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=32)).save_pretrained(folder, safe_serialization=True)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


def flags(d):
    return [x for k, v in d.items() for x in (f"--{k}", str(v))]
