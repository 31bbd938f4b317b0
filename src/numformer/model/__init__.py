"""The models: the decoder families (numformer.model.gpt, numformer.model.llama), the encoder, their
configs, parameter tables, checkpoints and sampling.

    >>> from numformer.model import build, load
    >>> model = build(LlamaConfig(n_kv_head=2))     # or GPTConfig(): the config's family decides
    >>> model = load("out/best")                    # the family the checkpoint's config.json names

`build`, `load` and `model_class` live in numformer.model.decoders and are imported on first use,
so that importing one module of this package (the encoder's, say) does not import every model.
"""

import importlib

_LAZY = {name: "numformer.model.decoders" for name in ("build", "load", "model_class")}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'numformer.model' has no attribute {name!r}")
