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
fsynced. Only then is it put in place: where the kernel can, the new folder and the checkpoint at
`path` trade names in one atomic step (renameat2 with RENAME_EXCHANGE), so `path` names a whole
checkpoint at every moment, and the old one, now under the temporary name, is deleted. Elsewhere
an existing checkpoint at `path` is renamed aside (`.NAME.numformer-old-PID-*`), the new folder is
renamed to `path`, and the old one is deleted. A crash while writing leaves `path` untouched; a
crash between the two renames leaves the complete old checkpoint aside (load_checkpoint then says
where) and the next save cleans up. There is never a half-written checkpoint at `path`. A path
that exists and is not a numformer checkpoint (a file, a folder of other things) is never
overwritten.

Cleaning up deletes only what is recognisably numformer's and abandoned: a temporary folder that
holds numformer's writer record (WRITER_MARK: pid and host) of a process that no longer runs, and
a set-aside or temporary folder that is a numformer checkpoint (the old one, left by a save that
died right after the exchange), named with the pid of a process that no longer runs. A user's
folder that happens to have such a name, and the temporary folder of a save still in progress in
another process, are left alone. write_folder and replace_file are the writers that the rest of
numformer uses (Hugging Face export, metrics.jsonl, loss.png).

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

A reader of a checkpoint that a running job saves gets the old checkpoint or the new one, whole:
every file is opened through one handle on the folder, and a read that raced with a save starts
again (load_checkpoint). Files of the user's are read only when they are regular files of a
sane size (read_file): a FIFO would block forever, a link to /dev/zero never ends.

The interop readers (interop/gpt2.py, interop/bert.py, sentence/) share this module's
PICKLE_SUFFIXES, pickle_refusal, read_file and read_json, so every JSON and pickle error reads
the same.
"""

import ctypes
import errno
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
from safetensors.numpy import save

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


def replace_file(path: Path, data) -> None:
    """Write `data` to the file `path` through a temporary sibling unique to this process, then
    rename it over `path`. The caller has checked that `path` may be replaced. `data` is bytes, or
    an iterable of bytes written one after another (a file too large to hold in memory at once);
    an error raised while iterating removes the temporary file and propagates."""
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


def _write_file(file: Path, data) -> None:
    """Write `data` (bytes, or an iterable of bytes) to a new file and make it durable (fsync)
    before returning."""
    with open(file, "xb") as f:
        for part in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
            f.write(part)
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
    """Put the complete folder `tmp` at `path`; the old checkpoint goes only once the new is in.

    Where the kernel can (Linux 3.15+ on most file systems), the two folders trade names in one
    step (_exchange), so `path` always names a whole checkpoint: a reader that opens it gets the
    old one or the new one. Elsewhere the old one is renamed aside first, and for a moment there
    is nothing at `path` (load_checkpoint waits that moment out)."""
    if not os.path.lexists(path):
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        return
    if _exchange(tmp, path):             # tmp now names the old checkpoint
        _fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
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


_RENAME_EXCHANGE = 2          # linux/fs.h
_AT_FDCWD = -100
_renameat2 = None             # libc's renameat2, found on first use (False: there is none)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names of two existing entries of one folder in one atomic step, with Linux's
    renameat2(RENAME_EXCHANGE); False, changing nothing, where the system or the file system
    cannot (then the caller renames twice)."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _renameat2 = libc.renameat2          # glibc 2.28+, musl 1.2.3+
                _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
                _renameat2.restype = ctypes.c_int
            except (OSError, AttributeError):
                _renameat2 = False
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False                       # not on this kernel or file system: rename twice
    raise OSError(err, os.strerror(err), str(b))


def _remove_leftovers(path: Path, is_ours) -> None:
    """Delete temp and set-aside folders that an earlier, interrupted save left next to `path`:
    only numformer's own (see the module docstring), and only those whose writer has ended."""
    for tmp in _siblings(path, _TMP):
        # a half-written folder, or (a crash right after _exchange) the old checkpoint under a temp name
        if _abandoned(tmp) or (not _pid_alive(_pid_in_name(tmp, _TMP)) and is_ours(tmp)):
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


_RETRIES = 12   # how many times a reader that raced with a save starts again


class _Raced(Exception):
    """A save replaced the folder at the path while its files were being opened."""


def load_checkpoint(path, *, before_reading=None) -> Checkpoint:
    """Read a checkpoint folder written by save_checkpoint, verifying every file.

    Raises CheckpointError (one line) for: a missing folder or file, invalid JSON, edited settings
    (config_sha256), a file whose size or SHA-256 differs from config.json's record, an
    unparsable safetensors file, non-float or non-finite weights, and pickle files (refused
    unopened).

    A checkpoint that a running job saves again while it is read is read whole, the old one or the
    new one: all its files are opened through one handle on the folder, so they come from the same
    folder whatever is renamed meanwhile, and are read from those open files (a file deleted after
    it was opened can still be read). If a save replaced the folder while its files were being
    opened (a file went missing, or the folder at `path` is no longer the one opened), or `path`
    is missing while a running save has its old checkpoint aside, the read starts again.

    `before_reading(config, shapes, model_bytes)`, if given, is called once config.json and the
    header of model.safetensors are read, before any weight is: `config` without the bookkeeping,
    `shapes` the tensors' shapes by name (None if the header cannot be read: the full read says
    why), `model_bytes` the file's size. It may raise to refuse the checkpoint.
    """
    path = Path(path)
    for attempt in range(_RETRIES + 1):
        if attempt:
            time.sleep(min(0.002 * 2 ** attempt, 0.25))
        try:
            config, files = _open_checkpoint(path)
        except _Raced:
            continue
        try:
            return _read_checkpoint(path, config, files, before_reading)
        finally:
            for f in files.values():
                f.close()
    live = [a for a in _siblings(path, _OLD) if _pid_alive(_pid_in_name(a, _OLD))]
    if not os.path.lexists(path) and live:
        raise CheckpointError(f"{path}: no such checkpoint folder while process {_pid_in_name(live[-1], _OLD)} "
                              f"saves it (the previous checkpoint is in {live[-1]}); try again")
    raise CheckpointError(f"{path}: replaced by a save {_RETRIES + 1} times while it was being read (a run is "
                          "saving it again and again); try again")


def _open_checkpoint(path: Path):
    """(config, {file name: open file}) of the checkpoint folder at `path`, every file opened through
    one handle on the folder; _Raced if a save replaced the folder meanwhile."""
    try:
        folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.lexists(path) or _save_in_progress(path):     # back already, or between two renames
            raise _Raced from None
        raise CheckpointError(f"{path}: no such checkpoint folder{_aside_hint(path)}") from None
    except NotADirectoryError:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise pickle_refusal(path) from None
        raise CheckpointError(
            f"{path} is a file; a numformer checkpoint is a folder holding "
            f"{MODEL_FILE}, {CONFIG_FILE} and {TOKENIZER_FILE}"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    files = {}
    try:
        names = set(os.listdir(folder))
        pickles = sorted(n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES)
        if MODEL_FILE not in names and pickles:
            raise pickle_refusal(path / pickles[0])
        try:
            with _open_in(folder, CONFIG_FILE) as f:
                config = parse_json(read_open_file(f, path / CONFIG_FILE, JSON_LIMIT))
        except FileNotFoundError:
            if _replaced(path, folder):
                raise _Raced from None
            raise CheckpointError(f"{path / CONFIG_FILE}: missing; not a complete numformer checkpoint") from None
        except ValueError as e:
            raise CheckpointError(f"{path / CONFIG_FILE}: {e}") from None
        except OSError as e:
            raise CheckpointError(f"{path / CONFIG_FILE}: cannot be read ({e.strerror or type(e).__name__})") from None
        book = config.pop(BOOKKEEPING, None) if isinstance(config, dict) else None
        if not isinstance(config, dict):
            raise CheckpointError(f"{path / CONFIG_FILE}: expected a JSON object, found {type(config).__name__}")
        _check_bookkeeping(path, book)
        for name in book["files"]:
            try:
                files[name] = _open_in(folder, name)
            except FileNotFoundError:
                if _replaced(path, folder):
                    raise _Raced from None
                raise CheckpointError(f"{path / name}: missing; the checkpoint lists it in {CONFIG_FILE}") from None
            except OSError as e:
                raise CheckpointError(f"{path / name}: cannot be read ({e.strerror or type(e).__name__})") from None
        config[BOOKKEEPING] = book         # _read_checkpoint takes it out again
        return config, files
    except BaseException:
        for f in files.values():
            f.close()
        raise
    finally:
        os.close(folder)


def _open_in(folder: int, name: str):
    """The file `name` of the open folder, opened for reading (unbuffered); O_NONBLOCK so that a
    FIFO put there cannot block the open (its fstat then says what it is)."""
    return os.fdopen(os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder), "rb", buffering=0)


def _replaced(path: Path, folder: int) -> bool:
    """Whether `path` no longer names the folder open as `folder`: a save swapped it meanwhile."""
    try:
        now, opened = os.stat(path), os.fstat(folder)
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


def _save_in_progress(path: Path) -> bool:
    """Whether a running process has the checkpoint at `path` aside: a save that renames twice,
    between its renames."""
    return any(_pid_alive(_pid_in_name(aside, _OLD)) for aside in _siblings(path, _OLD))


def _check_bookkeeping(path: Path, book) -> None:
    if not isinstance(book, dict) or not isinstance(book.get("files"), dict):
        raise CheckpointError(
            f"{path / CONFIG_FILE} has no {BOOKKEEPING!r} section: not a numformer checkpoint"
        )
    if book.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {book.get('format')!r}; this numformer reads format {FORMAT}"
        )
    if "config_sha256" in book and not isinstance(book["config_sha256"], str):
        raise CheckpointError(f"{path / CONFIG_FILE}: bad record for its own settings (config_sha256)")
    files = book["files"]
    for required in (MODEL_FILE, TOKENIZER_FILE):
        if required not in files:
            raise CheckpointError(f"{path / CONFIG_FILE} does not list {required}: damaged checkpoint")
    for name, record in files.items():
        if name not in CHECKPOINT_FILES - {CONFIG_FILE}:
            raise CheckpointError(f"{path / CONFIG_FILE} lists an unexpected file {name!r}")
        if (not isinstance(record, dict) or not isinstance(record.get("sha256"), str)
                or not (record.get("bytes") is None or type(record["bytes"]) is int)):
            raise CheckpointError(f"{path / CONFIG_FILE}: bad record for {name}")


def _read_checkpoint(path: Path, config: dict, files: dict, before_reading) -> Checkpoint:
    """The Checkpoint of files opened by _open_checkpoint: checked, then read."""
    book = config.pop(BOOKKEEPING)
    if before_reading is not None:
        model = files[MODEL_FILE]
        try:
            header, _ = _read_header(model, path / MODEL_FILE)
            shapes = {name: tuple(e["shape"]) for name, e in header.items() if name != "__metadata__"}
        except CheckpointError:
            shapes = None                # the full read below says what is wrong
        before_reading(config, shapes, os.fstat(model.fileno()).st_size)
    if "config_sha256" in book:          # absent in checkpoints written before it was recorded
        try:
            same = config_digest(config) == book["config_sha256"]
        except RecursionError:           # parsed, but too deep to write back: not what numformer wrote
            same = False
        if not same:
            raise CheckpointError(
                f"{path / CONFIG_FILE}: its settings differ from the SHA-256 recorded in its {BOOKKEEPING!r} "
                "section (the file was edited or damaged; numformer does not run a model whose config changed)"
            )
    for name, f in files.items():
        _verify(f, path / name, book["files"][name])
    model = _read_float_tensors(files[MODEL_FILE], path / MODEL_FILE)
    optimizer = _read_float_tensors(files[OPTIMIZER_FILE], path / OPTIMIZER_FILE) if OPTIMIZER_FILE in files else None
    try:
        tokenizer = read_open_file(files[TOKENIZER_FILE], path / TOKENIZER_FILE, TOKENIZER_LIMIT).decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path / TOKENIZER_FILE}: cannot be read as UTF-8 text ({e})") from None
    return Checkpoint(model=model, optimizer=optimizer, config=config, tokenizer=tokenizer)


def _aside_hint(path: Path) -> str:
    """Where an interrupted save (its process has ended) left the previous checkpoint, if it did."""
    asides = [a for a in _siblings(path, _OLD)
              if (a / CONFIG_FILE).is_file() and not _pid_alive(_pid_in_name(a, _OLD))]
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


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words ("a FIFO (named pipe)")."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


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
        raise error(f"{file}: cannot be read: it is {_kind(st.st_mode)}, "
                    "not a regular file")
    with os.fdopen(fd, "rb") as f:
        return read_open_file(f, file, limit, error)


def read_open_file(f, file, limit: int, error=CheckpointError) -> bytes:
    """All bytes of the open file `f` (named `file` in errors), if it is a regular file of at most
    `limit` bytes (see read_file)."""
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{file}: cannot be read: it is {_kind(st.st_mode)}, "
                        "not a regular file")
        data = f.read(limit + 1) if st.st_size <= limit else b""
    except OSError as e:
        raise error(f"{file}: cannot be read ({e.strerror or type(e).__name__})") from None
    if st.st_size > limit or len(data) > limit:
        raise error(f"{file}: {max(st.st_size, len(data)):,} bytes, far more than such a file holds (numformer "
                    f"reads at most {limit:,}); not read")
    return data


def _verify(f, file: Path, record) -> None:
    """Check the open file `f` (named `file`) against config.json's record of its size and SHA-256."""
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{file}: cannot be read: it is {_kind(st.st_mode)}, "
                              "not a regular file")
    size = st.st_size
    if record.get("bytes") is not None and size != record["bytes"]:
        state = "truncated" if size < record["bytes"] else "damaged"
        raise CheckpointError(f"{file}: {state}: {size} bytes, {CONFIG_FILE} records {record['bytes']}")
    sha, offset = hashlib.sha256(), 0
    while chunk := os.pread(f.fileno(), 1 << 20, offset):
        sha.update(chunk)
        offset += len(chunk)
    if sha.hexdigest() != record["sha256"]:
        raise CheckpointError(
            f"{file}: contents differ from the SHA-256 recorded in {CONFIG_FILE} "
            "(the file was modified or damaged)"
        )


def _read_float_tensors(f, file: Path) -> dict[str, np.ndarray]:
    tensors = _read_tensors(f, file)
    for name, arr in tensors.items():
        if not np.issubdtype(arr.dtype, np.floating):
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {arr.dtype}, expected floating point")
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{file}: tensor {name!r} contains NaN or inf")
    return tensors


MAX_HEADER = 100_000_000   # bytes of a safetensors header, as the safetensors library limits it


def read_safetensors(file) -> dict[str, np.ndarray]:
    """All tensors of one safetensors file, as NumPy arrays.

    The header is checked first (length, JSON, dtypes, byte ranges against the file size: the
    tensors must fill the data exactly, in order), so a truncated or damaged file gives one
    CheckpointError line saying what is wrong. Pickle files are refused unopened; a FIFO or a
    device is refused by name. The dtype is not restricted here (Hugging Face files may hold int
    buffers); load_checkpoint adds the float and finiteness checks. bfloat16 tensors are widened
    to float32 exactly (see _read_tensors). Each tensor is read straight into its array: no
    memory map (a file truncated meanwhile is an error, not a SIGBUS) and no second copy.
    """
    file = Path(file)
    if file.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refusal(file)
    if not os.path.lexists(file):
        raise CheckpointError(f"{file}: no such file")
    try:
        st = os.stat(file)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{file}: not a file: it is {_kind(st.st_mode)}")
        f = os.fdopen(os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb", buffering=0)
    except OSError as e:
        raise CheckpointError(f"{file}: cannot be read ({e.strerror or type(e).__name__})") from None
    with f:
        return _read_tensors(f, file)


def _read_header(f, file: Path) -> tuple[dict, int]:
    """(header, offset of the data) of the open safetensors file `f`, checked (_check_header)."""
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{file}: not a file: it is {_kind(st.st_mode)}")
    size = st.st_size
    head = os.pread(f.fileno(), 9, 0)
    # A safetensors header length is 8 little-endian bytes followed by '{'; its first byte
    # can be anything (0x80 included), so sniff for zip/pickle only when that shape is absent.
    n_claimed = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    looks_safetensors = head[8:9] == b"{" and 0 < n_claimed <= size - 8
    if not looks_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80"):  # zip (torch.save) or raw pickle
        raise CheckpointError(
            f"{file}: looks like a PyTorch/pickle file, not safetensors; numformer never "
            "unpickles (loading a pickle can run arbitrary code)"
        )
    if len(head) < 8:
        raise CheckpointError(f"{file}: not a safetensors file (only {size} bytes)")
    n = n_claimed  # header length, u64 little-endian
    if n > size - 8:
        raise CheckpointError(
            f"{file}: truncated or not safetensors (header claims {n} bytes, file has {size})"
        )
    if n > MAX_HEADER:
        raise CheckpointError(f"{file}: not a safetensors file (a header of {n:,} bytes; at most {MAX_HEADER:,})")
    raw = os.pread(f.fileno(), n, 8)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):       # ValueError: JSONDecodeError, an integer too long
        raise CheckpointError(f"{file}: not a safetensors file (its header is not JSON)") from None
    except RecursionError:
        raise CheckpointError(f"{file}: not a safetensors file (its header's JSON is nested too deeply)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: not a safetensors file (its header is not a JSON object)")
    _check_header(file, header, data_bytes=size - 8 - n)
    return header, 8 + n


def _read_tensors(f, file: Path) -> dict[str, np.ndarray]:
    """Every tensor of the open safetensors file `f`, each read into a new array. A bfloat16 is
    the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits), so shifting its bits
    into the top half of a uint32 gives the float32 of exactly the same value (NumPy has no
    bfloat16)."""
    header, start = _read_header(f, file)
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        a = entry["data_offsets"][0]
        shape = tuple(entry["shape"])
        if entry["dtype"] == "BF16":
            bits = np.empty(shape, dtype="<u2")
            _read_into(f, file, start + a, bits)
            out[name] = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.empty(shape, dtype=np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<"))
            _read_into(f, file, start + a, arr)
            out[name] = arr
    return out


def _read_into(f, file: Path, offset: int, arr: np.ndarray) -> None:
    """Fill the contiguous array `arr` with the file's bytes from `offset` on."""
    buf = memoryview(arr.reshape(-1).view(np.uint8))
    f.seek(offset)
    done = 0
    while done < len(buf):
        got = f.readinto(buf[done:])
        if not got:
            raise CheckpointError(f"{file}: truncated while it was read ({offset + done} bytes; the header "
                                  f"needs {offset + len(buf)})")
        done += got


def _check_header(file: Path, header: dict, data_bytes: int) -> None:
    ranges = []
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
        ranges.append((a, b, name))
    end = 0
    for a, b, name in sorted(ranges):     # the tensors fill the data, one after another
        if a != end:
            raise CheckpointError(f"{file}: damaged header: tensor {name!r} starts at byte {a} of the data, "
                                  f"but the tensors before it end at {end}")
        end = b
    if end != data_bytes:
        raise CheckpointError(f"{file}: damaged: {data_bytes - end} bytes after the last tensor")


def _is_count(x) -> bool:
    return type(x) is int and x >= 0
