"""Intel MKL's gemm, called through ctypes from the optional `mkl` wheel (`pip install
'numformer[mkl]'`, x86-64): loading the library, and one matrix product. Whether a product goes
here or to NumPy's matmul is decided in numformer.ops.fast.dispatch (`linear_gemm`); the fast
linear map (numformer.ops.fast.linear.matmul) makes the call.

Why a second BLAS: the products of a training step are most of its time, and on some CPUs MKL's
single-threaded sgemm runs faster than the OpenBLAS that NumPy ships on the GPT's shapes
(docs/performance.md has the measurements, and the CPU where it did not); which one is faster
here is measured once per machine (numformer.ops.fast.blas_choice). PyTorch's CPU wheel uses MKL
too, so with it numformer's products and PyTorch's are made by the same code.

MKL is loaded with its sequential threading layer: it starts no threads of its own, and each
Python thread's product stays on that thread, as OpenBLAS's does when held to one thread.

Which bits: MKL and OpenBLAS sum a product's terms in different orders, so float32 results can
differ in the last bits (float64 ones far below any tolerance used here); each is deterministic.
MKL's conditional numerical reproducibility is switched on (MKL_CBWR_AUTO with STRICT), so the
same inputs give the same bits whatever their alignment in memory.
"""

from __future__ import annotations

import ctypes
import os
from importlib import metadata
from typing import NamedTuple

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SEQUENTIAL = 1                     # MKL_THREADING_SEQUENTIAL
_LP64 = 0                           # MKL_INTERFACE_LP64: 32-bit integer arguments
_CBWR_AUTO_STRICT = 2 | 0x10000     # MKL_CBWR_AUTO | MKL_CBWR_STRICT


class Unavailable(Exception):
    """MKL cannot be used here; the message says why, for the dispatch report."""


class Mkl(NamedTuple):
    version: str            # "2026.2"
    gemm: dict              # np.dtype -> cblas_sgemm / cblas_dgemm


def find_mkl_rt() -> str | None:
    """The path of libmkl_rt from the installed `mkl` distribution, or None."""
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


def load() -> Mkl:
    """The installed MKL, set up for numformer (sequential, LP64, reproducible); Unavailable
    when the wheel is missing or its library cannot be used. Call it once per process (the
    threading layer must be chosen before any other MKL call): numformer.ops.fast.dispatch does."""
    path = find_mkl_rt()
    if path is None:
        raise Unavailable("the mkl wheel is not installed")
    try:
        lib = ctypes.CDLL(path)
        for name in ("MKL_Set_Threading_Layer", "MKL_Set_Interface_Layer", "MKL_CBWR_Set"):
            getattr(lib, name).argtypes = [ctypes.c_int]
            getattr(lib, name).restype = ctypes.c_int
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
        raise Unavailable(f"libmkl_rt could not be used ({e})") from None
    text = buf.value.decode(errors="replace")
    version = text.split("Version", 1)[1].split()[0].split("-")[0] if "Version" in text else "(version unknown)"
    return Mkl(version, gemm)


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


def product(gemm, a, b, out=None, bias=None):
    """a @ b (+ bias on every row) by `gemm` (Mkl.gemm's function for a's dtype), into out when
    given, the bias added inside the product (C = A B + 1·C on C filled with the bias: one pass
    over C fewer). None, with nothing computed, where gemm cannot take the operands as they lie
    in memory: b or bias of another dtype, an operand that is neither a row-major matrix nor
    the transpose of one, or an out that is not a C-contiguous (M, N) array of a's dtype."""
    M, K = a.shape
    N = b.shape[1]
    if b.dtype != a.dtype or (bias is not None and bias.dtype != a.dtype) or b.shape[0] != K:
        return None
    la, lb = _operand(a), _operand(b)
    if la is None or lb is None:
        return None
    if out is None:
        out = np.empty((M, N), a.dtype)
    elif not (out.dtype == a.dtype and out.shape == (M, N) and out.flags.c_contiguous):
        return None
    if bias is not None:
        out[...] = bias
    gemm(_ROW_MAJOR, la[0], lb[0], M, N, K, 1.0, a.ctypes.data, la[1], b.ctypes.data, lb[1],
         0.0 if bias is None else 1.0, out.ctypes.data, N)
    return out
