"""Data: corpora (built-in Shakespeare, your own text), tokenizers (char, BPE), the cache, batches.

    >>> from numformer.data import load_text, prepare, get_batch
    >>> text, name = load_text(None)                     # the built-in Shakespeare
    >>> train_ids, val_ids, tok = prepare(text, "char")  # cached after the first run
    >>> x, y = get_batch(train_ids, 64, 12, np.random.default_rng(0))
"""

from numformer.data.batches import check_length, get_batch, prepare
from numformer.data.cache import default_cache_dir
from numformer.data.corpus import load_text
from numformer.data.tokenizer import BPETokenizer, CharTokenizer, from_json

__all__ = [
    "load_text",
    "CharTokenizer",
    "BPETokenizer",
    "from_json",
    "prepare",
    "get_batch",
    "check_length",
    "default_cache_dir",
]
