"""Checkpoints: a folder of safetensors and JSON, written atomically, never pickled.

    path/
      model.safetensors      the weights, under Hugging Face style names
      optimizer.safetensors  the optimizer state (Adam's m and v), when given
      config.json            the caller's config dict (model config, training state, step, RNG
                             state), plus numformer's own bookkeeping under "_numformer":
                             {"format": 1, "files": {name: {"sha256": ..., "bytes": ...}},
                              "config_sha256": ...}
      tokenizer.json         the tokenizer, as the JSON text the caller passed

Writing. Everything is serialised in memory first, then written into a temporary sibling folder
(`.NAME.numformer-tmp-PID-*`, in the same parent, so a rename moves it without copying) and
fsynced. Only then is it put in place: an existing checkpoint at `path` is renamed aside
(`.NAME.numformer-old-PID-*`), the new folder is renamed to `path`, and the old one is deleted. A
crash while writing leaves `path` untouched; a crash between the two renames leaves the complete
old checkpoint aside (load_checkpoint then says where) and the next save cleans up. There is never
a half-written checkpoint at `path`. A path that exists and is not a numformer checkpoint (a file,
a folder of other things) is never overwritten.

Cleaning up deletes only what is recognisably numformer's and abandoned: a temporary folder that
holds numformer's writer record (WRITER_MARK: pid and host) of a process that no longer runs, and
a set-aside folder that is a numformer checkpoint, named with the pid of a process that no longer
runs. A user's folder that happens to have such a name, and the temporary folder of a save still
in progress in another process, are left alone. write_folder and replace_file are the writers
that the rest of numformer uses (Hugging Face export, metrics.jsonl, loss.png).

Locking. lock_folder takes an advisory lock (flock) on a folder through its LOCK_FILE, which
records who holds it; `numformer train` holds one on its out_dir for the whole run, so a second
run on the same folder is refused with one line naming the first. The operating system releases
the lock when the process ends, however it ends (kill -9 included).

Reading. config.json records the SHA-256 and size of every other file, so a truncated or edited
weight file is caught before it is parsed, and the SHA-256 of its own settings (config_digest:
the caller's config written canonically, so re-indenting the file or reordering its keys changes
nothing), so an edited n_head or a deleted key is caught too; a checkpoint written before that
digest existed has none and loads as before. Weights and optimizer state must be floating point and
finite. Every problem is one CheckpointError line naming the file. Pickle files (PICKLE_SUFFIXES:
.bin, .pt, .pth, .pkl, .pickle, .ckpt, in any letter case) are refused without being opened:
unpickling can run arbitrary code.

The interop readers (interop/gpt2.py, model/encoder.py, sentence.py) share this module's
PICKLE_SUFFIXES, pickle_refusal and read_json, so every JSON and pickle error reads the same.
"""

import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numformer.errors import CheckpointError, NumformerError

FORMAT = 1
BOOKKEEPING = "_numformer"  # the key in config.json that numformer owns
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_FILES = frozenset({MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, TOKENIZER_FILE})
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_TMP, _OLD = ".numformer-tmp-", ".numformer-old-"
WRITER_MARK = ".numformer-writing"  # inside a temporary folder while it is written: who writes it
LOCK_FILE = ".numformer.lock"       # in a folder that a run holds: who holds it

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
    check_replaceable(path)

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

    write_folder(path, blobs, is_ours=is_own_checkpoint)


def write_folder(path: Path, blobs: dict[str, bytes], *, is_ours) -> None:
    """Put a folder holding exactly `blobs` (file name -> bytes) at `path`, atomically.

    The caller has checked that whatever is at `path` may be replaced. `is_ours(folder)` says
    whether a set-aside folder left by an interrupted earlier save is one of the caller's own (a
    checkpoint, an export), so that it may be deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_name(path, _TMP)
    tmp.mkdir()
    try:
        _write_file(tmp / WRITER_MARK, _writer_record())  # first: the folder is ours from the start
        for name, data in blobs.items():
            _write_file(tmp / name, data)
        _fsync_dir(tmp)
        _swap_in(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: never leave a temp folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        (path / WRITER_MARK).unlink()
    except OSError:
        pass  # a stale record in a finished folder is harmless: readers and writers ignore it
    _remove_leftovers(path, is_ours)


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to the file `path` through a temporary sibling unique to this process, then
    rename it over `path`. The caller has checked that `path` may be replaced."""
    path = Path(path)
    tmp = _private_name(path, _TMP)
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _private_name(path: Path, marker: str) -> Path:
    """A sibling name that no other writer can pick: the pid says who made it."""
    return path.parent / f".{path.name}{marker}{os.getpid()}-{uuid.uuid4().hex[:16]}"


def _writer_record() -> bytes:
    return json.dumps({"writer": "numformer", "pid": os.getpid(), "host": socket.gethostname()}).encode("utf-8")


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
    try:
        # the digest is of what a reader will parse back (tuples as lists, NumPy scalars as numbers)
        digest = config_digest(json.loads(json.dumps(config, allow_nan=False, default=_json_scalar)))
        full = {**config, BOOKKEEPING: {"format": FORMAT, "files": files, "config_sha256": digest}}
        return json.dumps(full, indent=2, ensure_ascii=False, allow_nan=False, default=_json_scalar)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config cannot be written as JSON: {e}") from None


def config_digest(config: dict) -> str:
    """SHA-256 of a config's canonical JSON: keys sorted, no spaces, ASCII only. Two configs that
    hold the same settings have the same digest, however their files are laid out."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


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
    aside = _private_name(path, _OLD)
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)  # put the old checkpoint back
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(path: Path, is_ours) -> None:
    """Delete temp and set-aside folders that an earlier, interrupted save left next to `path`:
    only numformer's own (see the module docstring), and only those whose writer has ended."""
    for tmp in _siblings(path, _TMP):
        if _abandoned(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    for aside in _siblings(path, _OLD):
        if not _pid_alive(_pid_in_name(aside, _OLD)) and is_ours(aside):
            shutil.rmtree(aside, ignore_errors=True)


def _abandoned(tmp: Path) -> bool:
    """True for a temporary folder whose writer record names a process of this host that has ended."""
    try:
        record = parse_json(read_file(tmp / WRITER_MARK, 4096))
        pid, host = record["pid"], record["host"]
    except (NumformerError, ValueError, TypeError, KeyError):
        return False  # no record: not numformer's, or not yet readable
    if record.get("writer") != "numformer" or type(pid) is not int or host != socket.gethostname():
        return False  # another host's process cannot be checked from here
    return not _pid_alive(pid)


def _pid_in_name(folder: Path, marker: str) -> int | None:
    rest = folder.name.split(marker, 1)[-1]
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() and len(rest) > len(head) else None


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False  # named before pids went into the name: its writer is long gone
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except (OverflowError, ValueError):
        return False
    return True


def _siblings(path: Path, marker: str) -> list[Path]:
    prefix = f".{path.name}{marker}"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(path.parent / n for n in names if n.startswith(prefix) and (path.parent / n).is_dir())


def check_replaceable(path: Path) -> None:
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
    extra = [e for e in entries if e not in CHECKPOINT_FILES | {WRITER_MARK}]
    if extra:
        raise CheckpointError(
            f"{path} holds files numformer did not write ({', '.join(extra[:3])}); refusing to overwrite it"
        )


def _is_checkpoint(folder: Path) -> bool:
    try:
        config = parse_json(read_file(folder / CONFIG_FILE, JSON_LIMIT))
    except (NumformerError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get(BOOKKEEPING), dict)


def is_own_checkpoint(folder: Path) -> bool:
    """A numformer checkpoint holding only the files numformer writes: safe to delete or replace."""
    try:
        entries = set(os.listdir(folder))
    except OSError:
        return False
    return entries <= CHECKPOINT_FILES | {WRITER_MARK} and _is_checkpoint(folder)


# ---------------------------------------------------------------------------------------- lock


class FolderLock:
    """An advisory lock on a folder (flock on its LOCK_FILE), held until release() or the end of
    the process. release() deletes the lock file (and the folder, if lock_folder created it and
    nothing else was put there) before it lets go, so a finished run leaves no trace of it."""

    def __init__(self, folder: Path, fd: int | None, created: bool):
        self.folder, self._fd, self._created = folder, fd, created

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            # still locked while it goes: whoever opened the old file sees that it is gone and retries
            (self.folder / LOCK_FILE).unlink()
            if self._created:
                self.folder.rmdir()  # only if empty: OSError otherwise
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_folder(folder, command: str, *, create: bool = True) -> FolderLock:
    """Lock `folder` for `command` (say "numformer train"), or raise NumformerError in one line
    naming the process that holds it (its command, pid, host and start time, read from the lock
    file). With create=False a folder without a lock file is not locked (and nothing is written
    into it): a command that writes one file into a folder of the user's checks that no run
    holds it without leaving a lock file behind.
    """
    folder = Path(folder)
    file = folder / LOCK_FILE
    created = False
    for _ in range(100):
        if create and not folder.exists():
            try:
                folder.mkdir(parents=True)
                created = True
            except FileExistsError:
                pass
        elif not create and not os.path.lexists(file):
            return FolderLock(folder, None, False)
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue  # the folder was removed by the run that just gave it up
        except OSError as e:
            raise NumformerError(f"{file} cannot be used as numformer's lock file "
                                 f"({e.strerror or type(e).__name__}); move it away") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise NumformerError(f"{folder} is in use by {holder}; wait for it to end or choose another "
                                 "folder") from None
        try:  # the run before us may have removed the file it had created: lock the one there now
            same = os.path.samestat(os.fstat(fd), os.stat(file, follow_symlinks=False))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise NumformerError(f"{file}: could not take the lock (the file keeps changing)")
    try:
        text = os.pread(fd, 4096, 0)
        if text.strip() and _lock_record(text) is None:
            raise NumformerError(f"{file} exists and was not written by numformer; refusing to overwrite it "
                                 "(move it away)")
        record = {"numformer": command, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
    except BaseException:
        os.close(fd)
        raise
    return FolderLock(folder, fd, created)


def _lock_record(text: bytes) -> dict | None:
    try:
        record = parse_json(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("numformer"), str) else None


def _lock_holder(fd: int) -> str:
    try:
        record = _lock_record(os.pread(fd, 4096, 0))
    except OSError:
        record = None
    if record is None:
        return "another numformer process"
    return f"{record['numformer']} (pid {record.get('pid')} on {record.get('host')}, since {record.get('since')})"


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
    if "config_sha256" in book:          # absent in checkpoints written before it was recorded
        if not isinstance(book["config_sha256"], str):
            raise CheckpointError(f"{path / CONFIG_FILE}: bad record for its own settings (config_sha256)")
        try:
            same = config_digest(config) == book["config_sha256"]
        except RecursionError:           # parsed, but too deep to write back: not what numformer wrote
            same = False
        if not same:
            raise CheckpointError(
                f"{path / CONFIG_FILE}: its settings differ from the SHA-256 recorded in its {BOOKKEEPING!r} "
                "section (the file was edited or damaged; numformer does not run a model whose config changed)"
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


# What a user's file may weigh before numformer reads it: far above what such files hold (a
# config.json has kilobytes; GPT-2's tokenizer.json 1.4 MB, the largest tokenizers some tens of
# MB), far below what would exhaust memory.
JSON_LIMIT = 64 << 20        # config.json, model.safetensors.index.json, modules.json, ...
TOKENIZER_LIMIT = 512 << 20  # tokenizer.json, vocab.json, merges.txt


def read_json(file, what: str = "", *, expect: type | None = dict, limit: int = JSON_LIMIT):
    """The parsed contents of a UTF-8 JSON file, or a one-line CheckpointError naming the file.

    The error says which of these went wrong: the file is missing (followed by `what`, if given:
    why the file is needed), is not a regular file or is larger than `limit` bytes (then it is not
    read at all: see read_file), cannot be read (the OS error), is not UTF-8, is not valid JSON
    (with line and column; an integer too long for Python to read), or its top level is not of type
    `expect` (dict: a JSON object, list: a JSON array; None accepts any JSON value).
    """
    file = Path(file)
    try:
        value = parse_json(read_file(file, limit, what))
    except ValueError as e:
        raise CheckpointError(f"{file}: {e}") from None
    if expect is not None and not isinstance(value, expect):
        raise CheckpointError(
            f"{file}: expected a JSON {_JSON_KINDS.get(expect, expect.__name__)}, found {type(value).__name__}"
        )
    return value


def parse_json(raw: bytes | str):
    """json.loads, with every way it fails as a ValueError of one line: not UTF-8 text, invalid
    JSON (where), nested too deeply, or an integer longer than Python reads (4,300 digits, which
    json.loads reports as a bare ValueError)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    except ValueError:
        raise ValueError(f"invalid JSON (an integer of more than {sys.get_int_max_str_digits():,} digits)") from None


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def read_file(file, limit: int, what: str = "", error=CheckpointError) -> bytes:
    """The bytes of a user's file, read only if it is a regular file (a symbolic link to one is
    fine) of at most `limit` bytes: a FIFO would block the read forever, /dev/zero never ends, and
    a config.json of gigabytes is not one. Else `error` (one line naming the file): missing (then
    `what`, why the file is needed), not a regular file, too large, or the OS error."""
    file = Path(file)
    try:
        st = os.stat(file)                # follows links: a link to /dev/zero is a device
    except FileNotFoundError:
        raise error(f"{file}: missing" + (f"; {what}" if what else "")) from None
    except (OSError, ValueError) as e:    # ValueError: a NUL in the path
        raise error(f"{file}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        # O_NONBLOCK: a FIFO put at this name after the stat must not block the open
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC) if stat.S_ISREG(st.st_mode) else None
    except OSError as e:
        raise error(f"{file}: cannot be read ({e.strerror or type(e).__name__})") from None
    if fd is None:
        raise error(f"{file}: cannot be read: it is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, "
                    "not a regular file")
    with os.fdopen(fd, "rb") as f:
        return read_open_file(f, file, limit, error)


def read_open_file(f, file, limit: int, error=CheckpointError) -> bytes:
    """All bytes of the open file `f` (named `file` in errors), if it is a regular file of at most
    `limit` bytes (see read_file)."""
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{file}: cannot be read: it is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, "
                        "not a regular file")
        data = f.read(limit + 1) if st.st_size <= limit else b""
    except OSError as e:
        raise error(f"{file}: cannot be read ({e.strerror or type(e).__name__})") from None
    if st.st_size > limit or len(data) > limit:
        raise error(f"{file}: {max(st.st_size, len(data)):,} bytes, far more than such a file holds (numformer "
                    f"reads at most {limit:,}); not read")
    return data


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
    buffers); load_checkpoint adds the float and finiteness checks. bfloat16 tensors are widened
    to float32 exactly (see _read_with_bfloat16).
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
    except RecursionError:
        raise CheckpointError(f"{file}: not a safetensors file (its header's JSON is nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (its header is not a JSON object)")
    _check_header(file, header, data_bytes=size - 8 - n)
    if any(isinstance(e, dict) and e.get("dtype") == "BF16" for e in header.values()):
        return _read_with_bfloat16(file, header, start=8 + n)
    try:
        return load_file(file)
    except Exception as e:  # the Rust reader raises its own error type; keep the first line
        text = str(e).strip().splitlines()
        reason = text[0] if text else type(e).__name__
        raise CheckpointError(f"{file}: cannot be read as safetensors ({reason})") from None


def _read_with_bfloat16(file: Path, header: dict, start: int) -> dict[str, np.ndarray]:
    """The tensors of a file that holds bfloat16 ones (NumPy has no bfloat16, and safetensors'
    NumPy reader refuses them). A bfloat16 is the top 16 bits of a float32 (sign, 8 exponent
    bits, 7 mantissa bits), so shifting its bits into the top half of a uint32 gives the float32
    of exactly the same value. The header has been checked: every byte range lies in the data."""
    with open(file, "rb") as f:
        f.seek(start)
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        a, b = (int(x) for x in entry["data_offsets"])
        shape = tuple(int(s) for s in entry["shape"])
        if entry["dtype"] == "BF16":
            bits = np.frombuffer(data, dtype="<u2", count=(b - a) // 2, offset=a)
            out[name] = (bits.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        else:
            dt = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
            out[name] = np.frombuffer(data, dtype=dt, count=(b - a) // dt.itemsize, offset=a).reshape(shape).copy()
    return out


def _check_header(file: Path, header: dict, data_bytes: int) -> None:
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{file}: damaged header entry for tensor {name!r}") from None
        # JSON numbers may be floats, Infinity or 1e400 (inf): only whole numbers are sizes
        if not (isinstance(dtype, str) and isinstance(shape, list) and all(_is_count(x) for x in (*shape, a, b))):
            raise CheckpointError(f"{file}: damaged header entry for tensor {name!r} (dtype must be a name, "
                                  "shape and data_offsets whole numbers >= 0)")
        numel = math.prod(shape)
        if dtype not in _DTYPES and dtype != "BF16":
            raise CheckpointError(f"{file}: tensor {name!r} has unsupported dtype {dtype!r}")
        nbytes = numel * (2 if dtype == "BF16" else np.dtype(_DTYPES[dtype]).itemsize)
        if not a <= b or b - a != nbytes:
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


def _is_count(x) -> bool:
    return type(x) is int and x >= 0
