"""Interop tests run offline: sentence-transformers and transformers load local folders only.

huggingface_hub reads HF_HUB_OFFLINE when it is first imported, so it is set here, before any test
module in this folder imports transformers.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
