"""Matrix products for the fast linear map: Intel MKL's gemm, called through ctypes, where the
`mkl` wheel is installed (`pip install 'numformer[mkl]'`, x86-64) and BLAS runs on one thread;
NumPy's matmul (its OpenBLAS) everywhere else.

Why a second BLAS: the products of a training step are most of its time, and on the CPUs
measured here MKL's single-threaded sgemm runs 5-25 % faster than the OpenBLAS that NumPy ships
on the GPT's shapes (docs/performance.md). PyTorch's CPU wheel uses MKL too, so with it
numformer's products and PyTorch's are made by the same code.

When it is used: only while NumPy's BLAS is held to one thread (numformer.parallel.process's
limit_blas_threads(1): the threaded training step, the sentence encoder's batches, an MPI rank
with one core, or OPENBLAS_NUM_THREADS=1). MKL is loaded with its sequential layer, so it starts
no threads of its own and each Python thread's product stays on that thread, as OpenBLAS's does
there. Work that runs on one Python thread with NumPy's BLAS threads (generation, say) keeps
NumPy's matmul.

Which bits: MKL and OpenBLAS sum a product's terms in different orders, so float32 results can
differ in the last bits (float64 ones far below any tolerance used here); each is deterministic.
MKL's conditional numerical reproducibility is switched on (MKL_CBWR_AUTO with STRICT), so the
same inputs give the same bits whatever their alignment in memory.

Switch: NUMFORMER_BLAS=numpy in the environment when numformer is imported (or `blas.OFF = True`
in a running process) keeps NumPy's matmul for everything. A wheel that fails to load leaves
NumPy's matmul in use; describe() says why.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from numformer.parallel import process

OFF = os.environ.get("NUMFORMER_BLAS", "").strip().lower() in ("numpy", "openblas", "0", "off", "no")

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SEQUENTIAL = 1                     # MKL_THREADING_SEQUENTIAL
_LP64 = 0                           # MKL_INTERFACE_LP64: 32-bit integer arguments
_CBWR_AUTO_STRICT = 2 | 0x10000     # MKL_CBWR_AUTO | MKL_CBWR_STRICT

_STATE: dict = {}                   # "gemm": {dtype: function}, "version": str, "error": str
_LOCK = threading.Lock()


def _find_mkl_rt() -> str | None:
    """The path of libmkl_rt from the installed `mkl` distribution, or None."""
    from importlib import metadata

    try:
        files = metadata.files("mkl") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name.startswith("libmkl_rt.so"):
            path = str(f.locate())
            if os.path.exists(path):
                return path
    return None


def _load() -> dict:
    """_STATE, filled on the first call: "gemm" ({dtype: cblas function}, empty without MKL) is
    set last, under a lock, so that the threads of a training step that ask at once all wait for
    the same answer (one taking NumPy's product while another loads MKL would make the first
    step's bits depend on timing)."""
    if "gemm" in _STATE:
        return _STATE
    with _LOCK:
        if "gemm" not in _STATE:
            gemm, info = _open_mkl()
            _STATE.update(info)
            _STATE["gemm"] = gemm
    return _STATE


def _open_mkl() -> tuple[dict, dict]:
    """({dtype: cblas gemm}, {"version": ...} or {"error": why not}) of the installed MKL."""
    path = _find_mkl_rt()
    if path is None:
        return {}, {"error": "the mkl wheel is not installed"}
    try:
        lib = ctypes.CDLL(path)
        for name in ("MKL_Set_Threading_Layer", "MKL_Set_Interface_Layer", "MKL_CBWR_Set"):
            getattr(lib, name).argtypes = [ctypes.c_int]
            getattr(lib, name).restype = ctypes.c_int
        # the layers must be chosen before any other MKL call
        if lib.MKL_Set_Threading_Layer(_SEQUENTIAL) != _SEQUENTIAL:
            raise OSError("MKL would not take its sequential threading layer")
        if lib.MKL_Set_Interface_Layer(_LP64) != _LP64:
            raise OSError("MKL would not take its LP64 interface")
        lib.MKL_CBWR_Set(_CBWR_AUTO_STRICT)
        buf = ctypes.create_string_buffer(200)
        lib.MKL_Get_Version_String.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.MKL_Get_Version_String(buf, len(buf))
        gemm = {}
        for dtype, fn, scalar in ((np.float32, lib.cblas_sgemm, ctypes.c_float),
                                  (np.float64, lib.cblas_dgemm, ctypes.c_double)):
            fn.restype = None
            fn.argtypes = [ctypes.c_int] * 6 + [scalar, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                                ctypes.c_int, scalar, ctypes.c_void_p, ctypes.c_int]
            gemm[np.dtype(dtype)] = fn
    except (OSError, AttributeError) as e:
        return {}, {"error": f"libmkl_rt could not be used ({e})"}
    text = buf.value.decode(errors="replace")
    version = text.split("Version", 1)[1].split()[0].split("-")[0] if "Version" in text else "(version unknown)"
    return gemm, {"version": version}


def available() -> bool:
    """True when MKL's gemm is loaded and not switched off (OFF)."""
    return not OFF and bool(_load()["gemm"])


def in_use() -> bool:
    """True when products made now go to MKL: available(), and NumPy's BLAS held to one thread."""
    return available() and process.blas_single_threaded()


def describe() -> str:
    """One line for reports: which BLAS the fast linear map uses, or why only NumPy's."""
    if OFF:
        return "NumPy's matmul (NUMFORMER_BLAS=numpy)"
    state = _load()
    if not state["gemm"]:
        return f"NumPy's matmul ({state['error']})"
    return f"MKL {state['version']} (sequential) while BLAS runs on one thread, else NumPy's matmul"


def _operand(m):
    """(transpose flag, leading dimension) of a 2-D operand that gemm can read in place, or None.
    Row-major: a C-contiguous matrix (rows may be spaced wider than they are long) is read as
    it is; the transpose of one is read with the transpose flag."""
    if not m.flags.aligned:
        return None
    item = m.itemsize
    rows, cols = m.shape
    s0, s1 = m.strides
    if (s1 == item or cols == 1) and s0 % item == 0 and (rows == 1 or s0 // item >= max(cols, 1)):
        return _NO_TRANS, max(s0 // item if rows > 1 else cols, cols, 1)
    if (s0 == item or rows == 1) and s1 % item == 0 and (cols == 1 or s1 // item >= max(rows, 1)):
        return _TRANS, max(s1 // item if cols > 1 else rows, rows, 1)
    return None


# Products smaller than this many multiply-adds go to np.matmul: MKL's call costs about 8 µs
# more than NumPy's (ctypes and MKL's own dispatch), measured here as the break-even point (a
# 16 x 384 by 384 x 65 product, 0.4 M: NumPy 7 µs, MKL 17; 2 x 384 by 384 x 1152, 0.9 M: NumPy
# 214 µs, MKL 81).
MIN_WORK = 1 << 19


def matmul(a, b, out=None, bias=None):
    """a @ b for 2-D a (M, K) and b (K, N), plus bias (N,) on every row when given; written
    into out (M, N) when given. MKL's gemm makes the product when in_use(), the operands suit it
    (both float32 or both float64, each a row-major matrix or the transpose of one) and it is a
    product of two matrices worth a call (M and N above 1, M·N·K ≥ MIN_WORK); otherwise
    np.matmul does, and the bias is added after. A matrix times a vector (M or N of 1: one
    token's decoding step) stays with NumPy, which calls gemv for it: MKL's gemm took 3 times
    as long there (82 vs 27 µs for 1 x 384 by 384 x 1152)."""
    gemm = _STATE.get("gemm") if not OFF else None
    if gemm is None and not OFF:
        gemm = _load()["gemm"]
    M, K = a.shape
    N = b.shape[1]
    # the cheap tests first: a decoding step's vector products come here dozens of times a token
    fn = (gemm.get(a.dtype) if gemm and M > 1 and N > 1 and M * N * K >= MIN_WORK
          and process.blas_single_threaded() else None)
    if fn is not None and b.dtype == a.dtype and (bias is None or bias.dtype == a.dtype):
        la, lb = _operand(a), _operand(b)
        if (la is not None and lb is not None and b.shape[0] == K
                and (out is None or (out.dtype == a.dtype and out.shape == (M, N) and out.flags.c_contiguous))):
            if out is None:
                out = np.empty((M, N), a.dtype)
            if bias is not None:
                out[...] = bias          # C = A B + 1·C: the bias is added inside the product
            fn(_ROW_MAJOR, la[0], lb[0], M, N, K, 1.0, a.ctypes.data, la[1], b.ctypes.data, lb[1],
               0.0 if bias is None else 1.0, out.ctypes.data, N)
            return out
    out = np.matmul(a, b, out=out)
    if bias is not None:
        out += bias
    return out
