"""The README's docs/make_gpt2_folder.py, imported for the tests: a random GPT-2 folder with
vocab.json + merges.txt, made with transformers and tokenizers (no hub)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "make_gpt2_folder", Path(__file__).resolve().parents[1] / "docs" / "make_gpt2_folder.py")
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
make_gpt2_folder = _module.make_gpt2_folder

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 30 + \
       "Naïve café — 我爱 numbers: 3.14159, 2718; tabs\tand  double  spaces.\n"
