"""Process-level settings that make NumPy training fast.

NumPy allocates every temporary array with malloc. glibc serves blocks above 128 KiB with a fresh
mmap and returns them to the kernel on free, so each activation-sized temporary costs one page
fault per 4 KiB page the first time it is written: about as long as the arithmetic itself for the
elementwise ops of a small GPT. Raising glibc's mmap and trim thresholds keeps freed blocks in the
heap for reuse.

glibc also gives every thread that allocates its own arena. With the thresholds raised, the
threaded training step (one thread per batch shard) then keeps one heap of freed activations per
thread, and a block freed in one cannot serve the other. One arena for the process (M_ARENA_MAX 1)
lowers the peak memory and costs no speed: NumPy allocates a few hundred large blocks per step, so
the shared arena's lock is not contended. (docs/performance.md has the measurements.)

`tune_malloc()` is called by the commands that train or generate (`numformer train`, `bench`,
`embed`; `sample`, `chat`, `eval` and `explore` once their model is loaded, so that the file's
tensors, freed after the load, go back to the system) and by the Trainer. It is a no-op where
glibc is not the C library.

The rest of this module finds the OpenBLAS that NumPy loaded and sets its thread count. OpenBLAS
starts one thread per core; work that runs on one thread anyway (`numformer sample`, `numformer
train --threads 1`) gets one BLAS thread through `one_blas_thread()`, because the small matrix
products of a baby GPT gain little from more, and lose a great deal when another process keeps a
core busy (the BLAS threads then wait on each other). An explicit OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS or MKL_NUM_THREADS is always honoured.
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy  # noqa: F401  (loads the OpenBLAS whose thread count this module sets)

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # the user's choice of BLAS threads

_done = False
_blas = None  # (set, get) of the OpenBLAS NumPy loaded once looked up; False: there is none

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1, arena_max: int = 1) -> bool:
    """Keep freed blocks up to `mmap_threshold` bytes in the heap instead of unmapping them, in
    at most `arena_max` arenas. Call it before starting threads. Returns True if glibc accepted
    the settings. Safe to call more than once."""
    global _done
    if _done:
        return True
    try:
        if not sys.platform.startswith("linux"):
            return False
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
              and libc.mallopt(_M_ARENA_MAX, arena_max) == 1)
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _find_blas():
    """(set_num_threads, get_num_threads or None, get_config or None) of the OpenBLAS that NumPy loaded, found once
    through /proc/self/maps (Linux only); None when there is none."""
    global _blas
    if _blas is not None:
        return _blas or None
    _blas = False
    try:
        with open("/proc/self/maps", errors="surrogateescape") as f:   # a mapped file's name may not be UTF-8
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_"):
                setter = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if setter is not None:
                    setter.argtypes = [ctypes.c_int]
                    getter = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                    if getter is not None:
                        getter.restype = ctypes.c_int
                    config = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
                    if config is not None:
                        config.restype = ctypes.c_char_p
                    _blas = (setter, getter, config)
                    return _blas
    return None


def limit_blas_threads(n: int):
    """Set the thread count of the OpenBLAS that NumPy loaded to n; returns n, or None if no
    OpenBLAS was found (then nothing changes).

    OpenBLAS starts as many threads as the host has cores in EVERY process, so N ranks on one host
    would run N x cores busy threads, waiting on each other (docs/performance.md). The environment
    variables act only before NumPy is loaded, which is too late for a world created inside
    `numformer train`, so this calls openblas_set_num_threads in the loaded library.
    """
    global _blas_count
    fns = _find_blas()
    if fns is None:
        return None
    fns[0](int(n))
    _blas_count = int(n)
    return n


_blas_count = None        # OpenBLAS's thread count as last set by limit_blas_threads (None: not yet)


def blas_single_threaded() -> bool:
    """True when NumPy's BLAS runs on one thread: held there by limit_blas_threads(1) (the
    threaded step, the sentence encoder, one_blas_thread()), or started that way (one core, or
    OPENBLAS_NUM_THREADS=1). The fast linear map (numformer.ops.fast.dispatch.linear_gemm) then
    makes its products with MKL's sequential gemm, where it is installed and measured faster.
    Asked on every product, so it reads a variable; the library is asked only the first time."""
    global _blas_count
    if _blas_count is None:
        _blas_count = blas_thread_count() or 0
    return _blas_count == 1


def blas_threads_chosen() -> bool:
    """True when the environment sets BLAS's thread count (THREAD_VARS)."""
    return any(os.environ.get(k) for k in THREAD_VARS)


def one_blas_thread():
    """Give OpenBLAS one thread for work that runs on one thread, unless the environment chose a
    count (THREAD_VARS). Returns 1 when it was set, else None."""
    if blas_threads_chosen():
        return None
    return limit_blas_threads(1)


def blas_thread_count():
    """OpenBLAS's current thread count, or None when it cannot be read."""
    fns = _find_blas()
    return int(fns[1]()) if fns is not None and fns[1] is not None else None


def blas_config():
    """The build and kernels of the OpenBLAS that NumPy loaded, as OpenBLAS describes itself
    ("OpenBLAS 0.3.31  USE64BITINT DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"), or None."""
    fns = _find_blas()
    if fns is None or fns[2] is None:
        return None
    return fns[2]().decode(errors="replace").strip()


class blas_threads:
    """Context manager: run the block with OpenBLAS limited to n threads, then go back to the
    count it had before (which honours OPENBLAS_NUM_THREADS / OMP_NUM_THREADS). Used around the
    threaded training step, where each Python thread runs its own single-threaded matmuls."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.previous = blas_thread_count()
        limit_blas_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            limit_blas_threads(self.previous)
        return False
