"""What tests in several files share: one_line, the check that an error is reported in one line;
the text the random GPT-2 folders' tokenizer is trained on (the folders themselves come from
numformer.reference.gpt2_folder, which the README's walk-through uses too); and the small
checkpoints the checkpoint tests write and compare.

Fixtures that every test can use are in tests/conftest.py.
"""

import os

import numpy as np

from numformer.checkpoint import save_checkpoint

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 30 + \
       "Naïve café — 我爱 numbers: 3.14159, 2718; tabs\tand  double  spaces.\n"


DEEP = 200_000    # how deep crafted JSON and TOML nest: far past Python's recursion limit


def one_line(excinfo) -> str:
    """The message of a pytest.raises excinfo, checked to be one non-empty line."""
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- small checkpoints


def small_model(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal(7 * 5 + 5 * 3 + 3).astype(dtype)
    return {  # views into one flat buffer, as the GPT's parameters are
        "transformer.wte.weight": flat[:35].reshape(7, 5),
        "transformer.h.0.mlp.c_fc.weight": flat[35:50].reshape(5, 3),
        "transformer.h.0.mlp.c_fc.bias": flat[50:53],
    }


def save_small(path, seed=0, dtype=np.float32, optimizer=True, **config):
    model = small_model(seed, dtype)
    opt = {"m": np.full(53, 0.5, dtype), "v": np.full(53, 0.25, dtype)} if optimizer else None
    cfg = {"model": {"n_layer": 1}, "step": seed, **config}
    save_checkpoint(path, model=model, config=cfg, tokenizer='{"type": "char"}', optimizer=opt)
    return model, opt, cfg


def leftovers(folder):
    return [n for n in os.listdir(folder) if "numformer-tmp" in n or "numformer-old" in n]


def assert_model_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])
