"""What every Hugging Face model folder has, whatever the model: the files, their checks, and the
rules for writing one. numformer.interop.gpt2 and numformer.interop.llama read and write their
families' folders with these.

Reading. A folder holds config.json, the weights as safetensors (model.safetensors, or shards
listed in model.safetensors.index.json), and often a tokenizer (tokenizer.json). Pickle files
(pytorch_model.bin, *.pt, ...) are refused without being opened: loading a pickle can run
arbitrary code. Before any weight is read, the safetensors headers alone bound the config (a
config.json asking for more blocks than the files hold) and the memory it needs
(`check_before_reading`).

Writing. Both directions refuse an existing non-empty --out unless `overwrite` is given, and even
then replace only what numformer wrote itself: on import a numformer checkpoint, on export an
earlier export (its model.safetensors says producer "numformer" and the folder holds nothing but
the files an export writes). A file, a symbolic link or any other folder is never replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from numformer.checkpoint import (PICKLE_SUFFIXES, TOKENIZER_LIMIT, WRITER_MARK, check_replaceable, parse_json,
                                  pickle_refusal, read_file, read_json, read_safetensors)
from numformer.data.tokenizer import check_fits, from_json
from numformer.errors import CheckpointError, DataError
from numformer.model import memory

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
HF_TOKENIZER = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
NF_TOKENIZER = "numformer_tokenizer.json"  # a character tokenizer, which Hugging Face has no form for
LEFT_OUT = "; the checkpoint stores no tokenizer"  # ends the note for tokenizer files that cannot be used
NEEDED = "a Hugging Face model folder needs it"  # ends the "missing" error of read_json
PRODUCER = "numformer"


def check_hf_folder(folder: Path) -> None:
    """CheckpointError unless `folder` is a folder; a pickle given in its place is refused unopened."""
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder")
    if not folder.is_dir():
        if folder.suffix.lower() in PICKLE_SUFFIXES:
            raise pickle_refusal(folder)
        raise CheckpointError(f"{folder} is a file; give the Hugging Face model folder "
                              f"(holding {HF_CONFIG} and {HF_WEIGHTS})")


def read_hf_config(folder: Path) -> dict:
    """The folder's config.json as a dict (CheckpointError naming the file otherwise)."""
    return read_json(folder / HF_CONFIG, NEEDED)


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors weight files; a pickle-only folder is refused, never unpickled."""
    if (folder / HF_WEIGHTS).is_file():
        return [folder / HF_WEIGHTS]
    if (folder / HF_INDEX).is_file():
        index = read_json(folder / HF_INDEX, NEEDED)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{folder / HF_INDEX}: no 'weight_map' object")
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise CheckpointError(f"{folder / HF_INDEX}: bad shard file name {shard!r} for tensor {tensor!r}")
        files = []
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{folder / shard}: missing (listed in {HF_INDEX})")
            files.append(folder / shard)
        return files
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise pickle_refusal(pickles[0], context=f"{folder} has no {HF_WEIGHTS}")
    raise CheckpointError(f"no weights in {folder}: expected {HF_WEIGHTS} (Hugging Face safetensors format)")


def weights_source(folder: Path) -> str:
    """How errors name the weights: the file when there is one, else the folder (shards)."""
    return str(folder / HF_WEIGHTS) if (folder / HF_WEIGHTS).is_file() else str(folder)


def check_before_reading(folder: Path, n_layer: int, key: str, block_pattern: str, config_file: Path,
                         itemsize: int) -> None:
    """Refuse, from the safetensors headers alone, a config.json whose `key` (n_layer, say) asks for
    more blocks than the weight files hold (1000000000, say), and weights that would not fit in
    this machine's memory. The tensor-by-tensor checks come after the read."""
    files = weight_files(folder)
    shapes = {}
    for file in files:
        found = memory.header_shapes(file)
        if found is None:
            return  # the full read says what is wrong with the file
        shapes.update(found)
    memory.check_blocks(n_layer, key, shapes, block_pattern, config_file, files[0] if len(files) == 1 else folder)
    memory.refuse_if_too_big("importing this model", [("the files", memory.file_bytes(files)),
                                                      ("weights", memory.count(shapes) * itemsize)],
                             "free some memory or use a machine with more")


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of the folder's weight files, by name (a name in two shards is an error)."""
    tensors: dict[str, np.ndarray] = {}
    for file in weight_files(folder):
        for name, arr in read_safetensors(file).items():
            if name in tensors:
                raise CheckpointError(f"{file}: tensor {name} is also in another shard")
            tensors[name] = arr
    return tensors


def check_float(arr: np.ndarray, name: str, source: str) -> None:
    """CheckpointError unless the tensor is floating point and finite."""
    if not np.issubdtype(arr.dtype, np.floating):
        raise CheckpointError(f"{source}: tensor {name} has dtype {arr.dtype}, expected floating point")
    if not np.isfinite(arr).all():
        raise CheckpointError(f"{source}: tensor {name} contains NaN or inf")


def read_own_tokenizer(folder: Path, vocab_size: int) -> tuple[str, str | None] | None:
    """(numformer tokenizer JSON or "null", note) from the numformer_tokenizer.json that an export
    writes for a character tokenizer; None when the folder has none."""
    own = folder / NF_TOKENIZER
    if not os.path.lexists(own):
        return None
    try:
        tok = from_json(read_file(own, TOKENIZER_LIMIT))
        check_fits(tok, vocab_size, str(own))
    except CheckpointError as e:                  # names the file
        return "null", f"{e}{LEFT_OUT}"
    except DataError as e:
        return "null", f"{own} cannot be used ({e}){LEFT_OUT}"
    return tok.to_json(), None


def read_tokenizer_document(file: Path) -> tuple[dict | None, str | None]:
    """(parsed tokenizer.json, None), or (None, note ending LEFT_OUT) when it cannot be read as JSON."""
    try:
        doc = parse_json(read_file(file, TOKENIZER_LIMIT))
    except CheckpointError as e:                      # not a regular file, too large: not read
        return None, f"{e}{LEFT_OUT}"
    except ValueError as e:
        return None, f"{file}: {e}{LEFT_OUT}"
    return doc, None


def problem_of(note: str | None) -> str | None:
    """Why the folder's tokenizer files cannot be used, from a note that says they were left out."""
    return note[:-len(LEFT_OUT)] if note and note.endswith(LEFT_OUT) else None


def check_import_target(out: Path, overwrite: bool) -> None:
    """Refuse to write a checkpoint at `out` over anything but an empty folder or, with
    overwrite, a numformer checkpoint."""
    check_replaceable(out)  # a file, a link, a folder that is not a numformer checkpoint
    if out.is_dir() and os.listdir(out) and not overwrite:
        raise CheckpointError(f"{out} already holds a numformer checkpoint; refusing to replace it (a training "
                              "checkpoint would lose its optimizer and RNG state): pass --overwrite to "
                              "replace it, or choose another --out")


def check_export_target(out: Path, overwrite: bool, files: frozenset[str]) -> None:
    """Refuse to replace anything at `out` that is not an empty folder or, with overwrite, an
    earlier export (one holding no file outside `files`)."""
    if out.is_symlink():
        raise CheckpointError(f"{out} is a symbolic link; refusing to replace it (export to its target)")
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointError(f"{out} exists and is a file; refusing to overwrite it")
    if not os.listdir(out):
        return
    if not is_own_export(out, files):
        raise CheckpointError(f"{out} exists and is not an earlier numformer export; refusing to write into it "
                              "(choose an empty or new folder)")
    if not overwrite:
        raise CheckpointError(f"{out} holds an earlier numformer export; refusing to replace it: pass "
                              "--overwrite to replace it, or choose another --out")


def is_own_export(folder: Path, files: frozenset[str]) -> bool:
    """An earlier export: only `files` (and numformer's writer record), and weights that name
    numformer as producer."""
    try:
        entries = set(os.listdir(folder))
    except OSError:
        return False
    if not entries <= files | {WRITER_MARK}:
        return False
    if not (folder / HF_WEIGHTS).is_file():          # (a FIFO would block the open)
        return False
    try:
        with safe_open(str(folder / HF_WEIGHTS), framework="numpy") as f:
            return (f.metadata() or {}).get("producer") == PRODUCER
    except (OSError, SafetensorError):  # a missing or damaged file is not our export
        return False


def model_type_of(folder) -> str | None:
    """The model_type of a Hugging Face folder's config.json (None if it has none, or the folder
    cannot be read as one: the family's reader then says why)."""
    try:
        doc = read_json(Path(folder) / HF_CONFIG, NEEDED)
    except CheckpointError:
        return None
    value = doc.get("model_type")
    return value if isinstance(value, str) else None


__all__ = [
    "HF_CONFIG", "HF_WEIGHTS", "HF_INDEX", "HF_TOKENIZER", "HF_TOKENIZER_CONFIG", "NF_TOKENIZER", "LEFT_OUT", "NEEDED",
    "PRODUCER", "check_hf_folder", "read_hf_config", "weight_files", "weights_source", "check_before_reading",
    "read_weights", "check_float", "read_own_tokenizer", "read_tokenizer_document",
    "problem_of", "check_import_target", "check_export_target", "is_own_export", "model_type_of",
]
