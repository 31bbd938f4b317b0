"""Checkpoints: a folder of safetensors and JSON, written atomically, never pickled.

    path/
      model.safetensors      the weights, under Hugging Face style names
      optimizer.safetensors  the optimizer state (Adam's m and v), when given
      config.json            the caller's config dict (model config, training state, step, RNG
                             state), plus numformer's own bookkeeping under "_numformer":
                             {"format": 1, "files": {name: {"sha256": ..., "bytes": ...}}}
      tokenizer.json         the tokenizer, as the JSON text the caller passed

Writing. Everything is serialised in memory first, then written into a temporary sibling folder
(`.NAME.numformer-tmp-*`, in the same parent, so a rename moves it without copying) and fsynced.
Only then is it put in place: an existing checkpoint at `path` is renamed aside
(`.NAME.numformer-old-*`), the new folder is renamed to `path`, and the old one is deleted. A
crash while writing leaves `path` untouched; a crash between the two renames leaves the complete
old checkpoint aside (load_checkpoint then says where) and the next save cleans up. There is never
a half-written checkpoint at `path`. A path that exists and is not a numformer checkpoint (a file,
a folder of other things) is never overwritten.

Reading. config.json records the SHA-256 and size of every other file, so a truncated or edited
weight file is caught before it is parsed. Weights and optimizer state must be floating point and
finite. Every problem is one CheckpointError line naming the file. Pickle files (PICKLE_SUFFIXES:
.bin, .pt, .pth, .pkl, .pickle, .ckpt, in any letter case) are refused without being opened:
unpickling can run arbitrary code.

The interop readers (interop/gpt2.py, model/encoder.py, sentence.py) share this module's
PICKLE_SUFFIXES, pickle_refusal and read_json, so every JSON and pickle error reads the same.
"""

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numformer.errors import CheckpointError

FORMAT = 1
BOOKKEEPING = "_numformer"  # the key in config.json that numformer owns
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_FILES = frozenset({MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, TOKENIZER_FILE})
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_TMP, _OLD = ".numformer-tmp-", ".numformer-old-"

# safetensors dtype -> NumPy dtype, for the dtypes NumPy has
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_, "C64": np.complex64,
}  # fmt: skip


@dataclass
class Checkpoint:
    """What load_checkpoint returns. `config` is the dict the caller saved (without "_numformer")."""

    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray] | None
    config: dict
    tokenizer: str


# ---------------------------------------------------------------------------------------- save


def save_checkpoint(
    path,
    *,
    model: dict[str, np.ndarray],
    config: dict,
    tokenizer: str,
    optimizer: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a checkpoint folder at `path` atomically, replacing an earlier checkpoint there.

    Raises CheckpointError if `path` exists and is not a numformer checkpoint, or if a tensor
    holds NaN/inf (a diverged model is not saved over a good one). Malformed arguments (non-float
    tensors, a config that is not JSON) raise ValueError/TypeError.
    """
    path = Path(path)
    _check_replaceable(path)

    # serialise and validate everything before touching the disk
    blobs = {MODEL_FILE: _serialise(model, "model")}
    if optimizer is not None:
        blobs[OPTIMIZER_FILE] = _serialise(optimizer, "optimizer")
    if not isinstance(tokenizer, str):
        raise TypeError(f"tokenizer must be JSON text (str), got {type(tokenizer).__name__}")
    try:
        json.loads(tokenizer)
    except json.JSONDecodeError as e:
        raise ValueError(f"tokenizer is not valid JSON text: {e}") from None
    blobs[TOKENIZER_FILE] = tokenizer.encode("utf-8")
    files = {name: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for name, b in blobs.items()}
    blobs[CONFIG_FILE] = _config_text(config, files).encode("utf-8")  # written last

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{_TMP}{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, data in blobs.items():
            _write_file(tmp / name, data)
        _fsync_dir(tmp)
        _swap_in(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: never leave a temp folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_leftovers(path)


def _serialise(tensors, what: str) -> bytes:
    from safetensors.numpy import save

    if not isinstance(tensors, dict) or not tensors:
        raise ValueError(f"{what} must be a non-empty dict name -> ndarray")
    arrays = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or not isinstance(arr, np.ndarray):
            raise TypeError(f"{what}: entries must be str -> ndarray, got {name!r} -> {type(arr).__name__}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{what} tensor {name!r} has dtype {arr.dtype}, expected floating point")
        if not np.isfinite(arr).all():
            raise CheckpointError(f"refusing to save: {what} tensor {name!r} contains NaN or inf")
        # safetensors reads raw memory: it must be one dense block (a no-op for our views)
        arrays[name] = np.ascontiguousarray(arr)
    return save(arrays, metadata={"format": "np", "producer": "numformer"})


def _config_text(config, files) -> str:
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if BOOKKEEPING in config:
        raise ValueError(f"config must not contain the key {BOOKKEEPING!r}: numformer writes it")
    full = {**config, BOOKKEEPING: {"format": FORMAT, "files": files}}
    try:
        return json.dumps(full, indent=2, ensure_ascii=False, allow_nan=False, default=_json_scalar)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config cannot be written as JSON: {e}") from None


def _json_scalar(obj):
    if isinstance(obj, np.generic):  # np.int64(3), np.float32(0.5): exact as Python numbers
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _write_file(file: Path, data: bytes) -> None:
    """Write `data` to a new file and make it durable (fsync) before returning."""
    with open(file, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make renames and new entries in `folder` durable (a no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the complete folder `tmp` at `path`; the old checkpoint goes only once the new is in."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        return
    aside = path.parent / f".{path.name}{_OLD}{uuid.uuid4().hex}"
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)  # put the old checkpoint back
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(path: Path) -> None:
    """Delete temp and set-aside folders that an earlier, interrupted save left next to `path`."""
    for leftover in _siblings(path, _TMP) + _siblings(path, _OLD):
        shutil.rmtree(leftover, ignore_errors=True)


def _siblings(path: Path, marker: str) -> list[Path]:
    prefix = f".{path.name}{marker}"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(path.parent / n for n in names if n.startswith(prefix) and (path.parent / n).is_dir())


def _check_replaceable(path: Path) -> None:
    """Refuse to replace anything at `path` that is not an empty folder or a numformer checkpoint."""
    if path.is_symlink():
        raise CheckpointError(f"{path} is a symbolic link; refusing to replace it (save to its target)")
    if not path.exists():
        return
    if not path.is_dir():
        raise CheckpointError(
            f"{path} exists and is a file, not a numformer checkpoint; refusing to overwrite it"
        )
    entries = sorted(os.listdir(path))
    if not entries:
        return
    if not _is_checkpoint(path):
        raise CheckpointError(
            f"{path} exists and is not a numformer checkpoint; refusing to overwrite it "
            "(choose another path or move it away)"
        )
    extra = [e for e in entries if e not in CHECKPOINT_FILES]
    if extra:
        raise CheckpointError(
            f"{path} holds files numformer did not write ({', '.join(extra[:3])}); refusing to overwrite it"
        )


def _is_checkpoint(folder: Path) -> bool:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get(BOOKKEEPING), dict)


# ---------------------------------------------------------------------------------------- load


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint folder written by save_checkpoint, verifying every file.

    Raises CheckpointError (one line) for: a missing folder or file, invalid JSON, a file whose
    size or SHA-256 differs from config.json's record, an unparsable safetensors file, non-float
    or non-finite weights, and pickle files (refused unopened).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder{_aside_hint(path)}")
    if not path.is_dir():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise pickle_refusal(path)
        raise CheckpointError(
            f"{path} is a file; a numformer checkpoint is a folder holding "
            f"{MODEL_FILE}, {CONFIG_FILE} and {TOKENIZER_FILE}"
        )
    names = set(os.listdir(path))
    pickles = sorted(n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES)
    if MODEL_FILE not in names and pickles:
        raise pickle_refusal(path / pickles[0])

    config = read_json(path / CONFIG_FILE, "not a complete numformer checkpoint")
    book = config.pop(BOOKKEEPING, None)
    if not isinstance(book, dict) or not isinstance(book.get("files"), dict):
        raise CheckpointError(
            f"{path / CONFIG_FILE} has no {BOOKKEEPING!r} section: not a numformer checkpoint"
        )
    if book.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {book.get('format')!r}; this numformer reads format {FORMAT}"
        )
    files = book["files"]
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if required not in files:
            raise CheckpointError(f"{path / CONFIG_FILE} does not list {required}: damaged checkpoint")
    for name, record in files.items():
        if name not in CHECKPOINT_FILES - {CONFIG_FILE}:
            raise CheckpointError(f"{path / CONFIG_FILE} lists an unexpected file {name!r}")
        _verify(path / name, record)

    model = _read_float_tensors(path / MODEL_FILE)
    optimizer = _read_float_tensors(path / OPTIMIZER_FILE) if OPTIMIZER_FILE in files else None
    try:
        tokenizer = (path / TOKENIZER_FILE).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / TOKENIZER_FILE}: cannot be read as UTF-8 text ({e})") from None
    return Checkpoint(model=model, optimizer=optimizer, config=config, tokenizer=tokenizer)


def _aside_hint(path: Path) -> str:
    asides = [a for a in _siblings(path, _OLD) if (a / CONFIG_FILE).is_file()]
    if not asides:
        return ""
    return f" (an interrupted save left the previous checkpoint in {asides[-1]}; rename it to {path.name})"


def pickle_refusal(file, context: str = "") -> CheckpointError:
    """The one error for a pickle file (a PICKLE_SUFFIXES name): numformer refuses it unopened.

    `context` (say "no model.safetensors in DIR") comes first, before "; ". One line, naming the file.
    """
    file = Path(file)
    return CheckpointError(
        (f"{context}; " if context else "")
        + f"refusing to load {file}: {file.suffix or 'this'} files are Python pickles and loading a "
        "pickle can run arbitrary code; numformer reads only safetensors + JSON (convert it where you "
        "trust it, e.g. transformers' save_pretrained(dir, safe_serialization=True))"
    )


_JSON_KINDS = {dict: "object", list: "array"}


def read_json(file, what: str = "", *, expect: type | None = dict):
    """The parsed contents of a UTF-8 JSON file, or a one-line CheckpointError naming the file.

    The error says which of these went wrong: the file is missing (followed by `what`, if given:
    why the file is needed), cannot be read (the OS error), is not UTF-8, is not valid JSON (with
    line and column), or its top level is not of type `expect` (dict: a JSON object, list: a JSON
    array; None accepts any JSON value).
    """
    file = Path(file)
    if not file.exists():
        raise CheckpointError(f"{file}: missing" + (f"; {what}" if what else ""))
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{file}: cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{file}: not UTF-8 text") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise CheckpointError(f"{file}: invalid JSON (nested too deeply)") from None
    if expect is not None and not isinstance(value, expect):
        raise CheckpointError(
            f"{file}: expected a JSON {_JSON_KINDS.get(expect, expect.__name__)}, found {type(value).__name__}"
        )
    return value


def _verify(file: Path, record) -> None:
    """Check a file against config.json's record of its size and SHA-256."""
    if (not isinstance(record, dict) or not isinstance(record.get("sha256"), str)
            or not (record.get("bytes") is None or type(record["bytes"]) is int)):
        raise CheckpointError(f"{file.parent / CONFIG_FILE}: bad record for {file.name}")
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; the checkpoint lists it in {CONFIG_FILE}")
    size = file.stat().st_size
    if record.get("bytes") is not None and size != record["bytes"]:
        state = "truncated" if size < record["bytes"] else "damaged"
        raise CheckpointError(f"{file}: {state}: {size} bytes, {CONFIG_FILE} records {record['bytes']}")
    sha = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    if sha.hexdigest() != record["sha256"]:
        raise CheckpointError(
            f"{file}: contents differ from the SHA-256 recorded in {CONFIG_FILE} "
            "(the file was modified or damaged)"
        )


def _read_float_tensors(file: Path) -> dict[str, np.ndarray]:
    tensors = read_safetensors(file)
    for name, arr in tensors.items():
        if not np.issubdtype(arr.dtype, np.floating):
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {arr.dtype}, expected floating point")
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{file}: tensor {name!r} contains NaN or inf")
    return tensors


def read_safetensors(file) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file, as NumPy arrays.

    The header is checked first (length, JSON, dtypes, byte ranges against the file size), so a
    truncated or damaged file gives one CheckpointError line saying what is wrong. Pickle files
    are refused unopened. The dtype is not restricted here (Hugging Face files may hold int
    buffers); load_checkpoint adds the float and finiteness checks.
    """
    from safetensors.numpy import load_file

    file = Path(file)
    if file.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refusal(file)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such file" if not file.exists() else f"{file}: not a file")
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        # A safetensors header length is 8 little-endian bytes followed by '{'; its first byte
        # can be anything (0x80 included), so sniff for zip/pickle only when that shape is absent.
        n_claimed = int.from_bytes(head, "little") if len(head) == 8 else -1
        brace = f.read(1)
        f.seek(8)
        looks_safetensors = brace == b"{" and 0 < n_claimed <= size - 8
        if not looks_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80"):  # zip (torch.save) or raw pickle
            raise CheckpointError(
                f"{file}: looks like a PyTorch/pickle file, not safetensors; numformer never "
                "unpickles (loading a pickle can run arbitrary code)"
            )
        if len(head) < 8:
            raise CheckpointError(f"{file}: not a safetensors file (only {size} bytes)")
        n = int.from_bytes(head, "little")  # header length, u64 little-endian
        if n > size - 8:
            raise CheckpointError(
                f"{file}: truncated or not safetensors (header claims {n} bytes, file has {size})"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{file}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (its header is not a JSON object)")
    _check_header(file, header, data_bytes=size - 8 - n)
    try:
        return load_file(file)
    except Exception as e:  # the Rust reader raises its own error type; keep the first line
        text = str(e).strip().splitlines()
        reason = text[0] if text else type(e).__name__
        raise CheckpointError(f"{file}: cannot be read as safetensors ({reason})") from None


def _check_header(file: Path, header: dict, data_bytes: int) -> None:
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = entry["dtype"], entry["shape"], entry["data_offsets"]
            numel = math.prod(int(s) for s in shape)
            a, b = int(a), int(b)
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{file}: damaged header entry for tensor {name!r}") from None
        if dtype == "BF16":
            raise CheckpointError(
                f"{file}: tensor {name!r} is bfloat16, which NumPy cannot hold; convert the file to float32"
            )
        if dtype not in _DTYPES:
            raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {dtype!r}")
        nbytes = numel * np.dtype(_DTYPES[dtype]).itemsize
        if any(int(s) < 0 for s in shape) or not 0 <= a <= b or b - a != nbytes:
            raise CheckpointError(
                f"{file}: header entry for {name!r} is inconsistent ({dtype} {shape} at [{a}, {b}))"
            )
        if b > data_bytes:
            raise CheckpointError(
                f"{file}: truncated: tensor {name!r} needs bytes up to {b}, the data holds {data_bytes}"
            )
        end = max(end, b)
    if end != data_bytes:
        raise CheckpointError(f"{file}: damaged: {data_bytes - end} bytes after the last tensor")
