"""Which BLAS makes the fast linear map's products on this machine, MKL's sequential gemm or
NumPy's own (OpenBLAS): decided by measuring both, once per machine, and kept in numformer's
cache folder ($NUMFORMER_CACHE, else ~/.cache/numformer). numformer.ops.fast.dispatch asks
`verdict` when the `mkl` wheel is installed and NUMFORMER_BLAS does not force either.

Why measure: which of the two is faster depends on the CPU, not on its vendor alone. On an Intel
Xeon MKL made a small GPT's products about 20 % faster; on an AMD EPYC (Zen 5) it was 15-20 %
slower on every one of them (docs/performance.md has both).

What is measured: the products of one block of the baby and the small GPT (`SHAPES`), each
linear map forward and its two backward products, and the tied LM head, with the rows of one
thread's share of the batch on two cores (baby 12 x 64 / 2, small 8 x 256 / 2). Both BLAS run
on one thread, as they do when the linear maps use MKL (the threaded step, the encoder's
batches). The two alternate product by product for ROUNDS rounds; each product counts with its
fastest time (other processes only ever add time), and MKL is chosen when the sum of its times is
at most MARGIN of NumPy's. It takes about a second.

The cache file is `blas-<key>.json`, the key a SHA-256 of what the answer depends on
(`machine_key`): the CPU (model name, family, model, stepping and flags), NumPy's version and
its BLAS as that library describes itself, the mkl wheel's version, the environment variables
that change either library's kernels, and SHAPES. The record inside repeats the key; a file
that is damaged, or that names another machine, is measured again with a one-line note. A
process that finds no answer takes an advisory lock on `blas-<key>.lock` while it measures, so
processes that start together (MPI ranks, say) measure once and agree.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from numformer import checkpoint
from numformer.data.cache import default_cache_dir, note
from numformer.ops.fast import mkl
from numformer.parallel.process import blas_config, blas_threads

FORMAT = 1
ROUNDS = 4
MARGIN = 0.97       # MKL must be at least 3 % faster: closer than that is this machine's noise

# (rows, C, hidden width F, vocabulary V) of one thread's share of a training step's block
CONFIGS = {"baby": (384, 128, 512, 65), "small": (1024, 384, 1536, 65)}


def _block_products(rows, C, F, V):
    """(M, K, N, layout) of one block's linear maps and the LM head: forward x Wᵀ ("nt"), the
    input's gradient dy W ("nn") and the weight's gradient dyᵀ x ("tn"), as numformer.ops.fast.linear
    makes them."""
    out = []
    for c_in, c_out in ((C, 3 * C), (C, C), (C, F), (F, C), (C, V)):
        out += [(rows, c_in, c_out, "nt"), (rows, c_out, c_in, "nn"), (c_out, rows, c_in, "tn")]
    return tuple(out)


SHAPES = tuple(p for shape in CONFIGS.values() for p in _block_products(*shape))


@dataclass(frozen=True)
class Verdict:
    """The measurement and where it is kept."""

    mkl_ms: float           # the sum over SHAPES of each product's fastest time, MKL
    numpy_ms: float         # the same, NumPy's matmul
    file: Path | None       # the cache file (None: not written)
    measured_now: bool      # measured in this process, not read

    @property
    def mkl_faster(self) -> bool:
        return self.mkl_ms <= MARGIN * self.numpy_ms

    def why(self) -> str:
        """'MKL 107.4 ms, NumPy 92.1 ms on ... (cached in FILE)' for the dispatch report."""
        where = ", ".join(filter(None, ("measured now" if self.measured_now else "",
                                        f"cached in {self.file}" if self.file else "not cached")))
        return (f"MKL {self.mkl_ms:.1f} ms, NumPy {self.numpy_ms:.1f} ms on one block of the baby and small GPTs' "
                f"float32 products, one thread ({where})")


# ----------------------------------------------------------------------------- the key


def cpu_identity() -> dict:
    """What tells CPUs apart for this: /proc/cpuinfo's model name, family, model and stepping of
    the first processor, and a SHA-256 of its flags (a hypervisor may show only "AMD EPYC" for
    several generations); platform.processor() elsewhere."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break                                   # the first processor only
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    flags = fields.get("flags") or fields.get("Features") or ""
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "family/model/stepping": "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping")),
            "flags_sha256": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()}


def numpy_blas() -> str:
    """NumPy's BLAS: the library's own description where it gives one (OpenBLAS's names its
    kernels), else NumPy's build record."""
    described = blas_config()
    if described:
        return described
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{deps.get('name')} {deps.get('version')}"
    except Exception:   # an unusual NumPy build: the version below still tells builds apart
        return "unknown"


def mkl_version() -> str | None:
    """The installed mkl wheel's version (read from its metadata, without loading MKL), or None."""
    try:
        return metadata.version("mkl")
    except metadata.PackageNotFoundError:
        return None


def machine_key() -> dict:
    """Everything the answer depends on."""
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE",
                                      "MKL_CBWR") if k in os.environ}
    return {"format": FORMAT, "cpu": cpu_identity(), "numpy": np.__version__, "numpy_blas": numpy_blas(),
            "mkl": mkl_version(), "environment": env, "shapes": [f"{M}x{K}x{N} {layout}" for M, K, N, layout in SHAPES], "rounds": ROUNDS}


def cache_file(key: dict, folder: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(folder or default_cache_dir()) / f"blas-{digest}.json"


# ----------------------------------------------------------------------------- the measurement


def measure(gemm, dtype=np.float32) -> tuple[float, float]:
    """(MKL's, NumPy's) seconds for SHAPES: each product's fastest of ROUNDS alternating runs,
    summed. gemm: MKL's cblas gemm for dtype (numformer.ops.fast.mkl.Mkl.gemm's)."""
    rng = np.random.default_rng(0)
    cases = []
    for M, K, N, layout in SHAPES:
        a = rng.standard_normal((K, M) if layout == "tn" else (M, K), dtype=np.float32).astype(dtype, copy=False)
        b = rng.standard_normal((N, K) if layout == "nt" else (K, N), dtype=np.float32).astype(dtype, copy=False)
        cases.append((a.T if layout == "tn" else a, b.T if layout == "nt" else b, np.empty((M, N), dtype)))

    def run(name, i):
        """Seconds of case i's product on MKL ("mkl") or NumPy."""
        a, b, out = cases[i]
        t0 = time.perf_counter()
        if name == "mkl":
            if mkl.product(gemm, a, b, out) is None:
                raise RuntimeError("MKL's gemm refused an operand of the measurement")   # numformer's own bug
        else:
            np.matmul(a, b, out=out)
        return time.perf_counter() - t0

    best = {"mkl": [math.inf] * len(cases), "numpy": [math.inf] * len(cases)}
    with blas_threads(1):
        for i in range(len(cases)):              # untimed: first calls, page faults, MKL's own setup
            run("mkl", i)
            run("numpy", i)
        for r in range(ROUNDS):
            order = ("mkl", "numpy") if r % 2 == 0 else ("numpy", "mkl")
            for i in range(len(cases)):
                for name in order:
                    best[name][i] = min(best[name][i], run(name, i))
    return sum(best["mkl"]), sum(best["numpy"])


# ----------------------------------------------------------------------------- the cache


def _read(file: Path, key: dict, quiet: bool = False) -> Verdict | None:
    """The cached verdict, or None when there is none (a note, unless quiet, when there is a file
    that cannot be used)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):      # nothing cached (or no folder to cache in)
        return None
    except (OSError, UnicodeDecodeError) as e:
        problem = f"cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})"
    else:
        problem = _check(text, key)
        if problem is None:
            record = json.loads(text)
            return Verdict(record["mkl_ms"], record["numpy_ms"], file, measured_now=False)
    if not quiet:
        note(f"the BLAS choice cached in {file} {problem}; measuring again which BLAS is faster here")
    return None


def _check(text: str, key: dict) -> str | None:
    """What is wrong with a cache record, or None."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return "is damaged (not JSON)"
    if not isinstance(record, dict):
        return "is damaged (not a JSON object)"
    if record.get("key") != key:
        return "was measured for another CPU or other library versions"
    for name in ("mkl_ms", "numpy_ms"):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
            return f"is damaged ({name} is {value!r}, not a positive time)"
    return None


def write(file: Path, key: dict, mkl_ms: float, numpy_ms: float) -> bool:
    record = {"key": key, "mkl_ms": mkl_ms, "numpy_ms": numpy_ms, "mkl_faster": mkl_ms <= MARGIN * numpy_ms, "margin": MARGIN,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        checkpoint.replace_file(file, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
        return True
    except OSError as e:
        note(f"could not write the BLAS choice to {file} ({e.strerror or type(e).__name__}); "
             "the next process measures again")
        return False


class _Lock:
    """An advisory lock on `file` while it is measured (none where the folder cannot be made)."""

    def __init__(self, file: Path):
        self.path = file.with_suffix(".lock")
        self.fd = None

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None                  # measured without the lock: the file write below notes why
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)               # closing releases the lock
        return False


def verdict(load_gemm, folder: Path | None = None, measure=measure) -> Verdict:
    """MKL's and NumPy's times on this machine: read from the cache, or measured (and cached).
    load_gemm() gives MKL's sgemm (loading MKL); it is called only to measure."""
    key = machine_key()
    file = cache_file(key, folder)
    found = _read(file, key)
    if found is not None:
        return found
    with _Lock(file):
        found = _read(file, key, quiet=True)       # another process measured while this one waited
        if found is not None:
            return found
        mkl_ms, numpy_ms = (round(t * 1e3, 4) for t in measure(load_gemm()))   # as the file keeps them
        written = write(file, key, mkl_ms, numpy_ms)
    return Verdict(mkl_ms, numpy_ms, file if written else None, measured_now=True)
