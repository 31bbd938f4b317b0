"""The one place that says which family a Hugging Face folder or a numformer checkpoint is, and
sends it to that family's converter: GPT-2 (numformer.interop.gpt2) or Llama, Mistral and Qwen2
(numformer.interop.llama). `numformer convert` and `numformer train --init_from` go through it.

    model = load_hf("tiny-llama")                    # a GPT or a Llama, with its tokenizer
    notes, done = import_hf("tiny-llama", "ckpt")    # numformer convert --from_hf
    notes, done = export_hf("ckpt", "hf-export")     # numformer convert --to_hf

The folder's config.json names its model_type; a checkpoint's config.json names its family in its
format (numformer.model.serialize).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from numformer.errors import CheckpointError
from numformer.interop import gpt2, llama
from numformer.interop.hf_folder import HF_CONFIG, model_type_of
from numformer.model.gpt import GPT

MODEL_TYPES = ("gpt2", *llama.MODEL_TYPES)
NAMES = {"gpt2": "GPT-2", "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}


def folder_model_type(folder) -> str:
    """The model_type of a Hugging Face folder: "gpt2", "llama", "mistral" or "qwen2". A folder
    whose config.json names another is refused (one line); one without a readable model_type is
    left to the GPT-2 reader, which says what is wrong with it."""
    kind = model_type_of(folder)
    if kind is not None and kind not in MODEL_TYPES:
        raise CheckpointError(f"{Path(folder) / HF_CONFIG}: model_type {kind!r} is not one numformer converts "
                              f"({', '.join(MODEL_TYPES)})")
    return kind or "gpt2"


def load_hf(folder, dtype=np.float32):
    """The model of a Hugging Face folder (a GPT for GPT-2, a Llama for Llama, Mistral, Qwen2),
    with its tokenizer, hf_notes and hf_tokenizer_problem (see GPT.from_hf, llama.load_hf_llama)."""
    if folder_model_type(folder) == "gpt2":
        return GPT.from_hf(folder, dtype=dtype)
    return llama.load_hf_llama(folder, dtype=dtype)


def import_hf(folder, out, dtype="float32", *, overwrite: bool = False) -> tuple[list[str], str]:
    """`numformer convert --from_hf FOLDER --out OUT`: (notes, the line saying what was written)."""
    kind = folder_model_type(folder)
    if kind == "gpt2":
        notes = gpt2.import_hf_gpt2(folder, out, dtype=dtype, overwrite=overwrite)
    else:
        notes = llama.import_hf_llama(folder, out, dtype=dtype, overwrite=overwrite)
    return notes, f"wrote numformer checkpoint {out} (from Hugging Face {NAMES[kind]} {folder})"


def export_hf(checkpoint, out, *, overwrite: bool = False) -> tuple[list[str], str]:
    """`numformer convert --to_hf CHECKPOINT --out OUT`: (notes, the line saying what was written)."""
    if llama.is_llama_checkpoint(checkpoint):
        notes = llama.export_hf_llama(checkpoint, out, overwrite=overwrite)
        return notes, (f"wrote Hugging Face Llama-family folder {out} (load it with "
                       "AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained)")
    notes = gpt2.export_hf_gpt2(checkpoint, out, overwrite=overwrite)
    return notes, f"wrote Hugging Face GPT-2 folder {out} (load it with GPT2LMHeadModel.from_pretrained)"


__all__ = ["MODEL_TYPES", "folder_model_type", "load_hf", "import_hf", "export_hf"]
