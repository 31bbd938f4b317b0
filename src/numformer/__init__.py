"""numformer: a Transformer language-model library written from the math up in NumPy.

    >>> from numformer import GPT, GPTConfig, Llama, LlamaConfig
    >>> model = GPT(GPTConfig(vocab_size=65, block_size=64))
    >>> model = Llama(LlamaConfig(vocab_size=65, block_size=64, n_kv_head=2))

Heavy submodules are imported lazily so that `numformer --help` starts fast.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "GPT": ("numformer.model.gpt", "GPT"),
    "GPTConfig": ("numformer.model.config", "GPTConfig"),
    "Llama": ("numformer.model.llama", "Llama"),
    "LlamaConfig": ("numformer.model.config", "LlamaConfig"),
    "embed": ("numformer.sentence", "embed"),
    "NumformerError": ("numformer.errors", "NumformerError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'numformer' has no attribute {name!r}")
