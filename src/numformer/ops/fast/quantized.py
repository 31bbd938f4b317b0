"""The products of float32 activations with quantized weights (numformer.ops.quant): what the
fast linear map (numformer.ops.fast.linear) runs for an int8, bf16 or (kept from a GGUF file)
Q4_1 weight.

    y = x deq(W)ᵀ          x (M, K) float32, W (N, K) quantized, y (M, N) float32
    dx = dy deq(W)         (backward: a frozen layer's input gradient)

Decoding multiplies one row of activations (M = the batch) by every weight once, so its time is
the time to read the weights. For up to ROWS rows the compiled row kernels
(numformer.ops.fast.kernels q8_rows, bf16_rows, q41_rows) read the int8 values and their scales,
the bf16 bits, or the Q4_1 blocks as they lie and sum in float32; nothing of the weight is converted to float32
anywhere but in registers. A product of at least PARALLEL_MIN weights runs on numba's threads
(the rows of W split between them) as float32 products run on BLAS's: only while NumPy's BLAS
has more than one thread (`numformer sample` gives it one, as for float32 weights, unless
OPENBLAS_NUM_THREADS or OMP_NUM_THREADS says more; `bench --generate` leaves it one per core), so
that a comparison with float32 decoding uses the same cores; only from the main thread (the
threaded training step and evaluation call from threads of their own, one per core already);
and only where numba's threading layer is one that several threads may call (OpenMP or TBB:
numba's own workqueue measured slower than one thread here). A core that another process keeps
busy slows a product split over two threads by far more than half, for these and for BLAS's.

Many rows (a prompt, an evaluation batch) are a matrix product, which BLAS makes far faster than
any loop of ours: W is dequantized TILE_BYTES at a time, a tile of rows into a small float32
buffer, and np.matmul multiplies it; the whole float32 W never exists. Without numba the tiles
are made by NumPy (numformer.ops.quant's formulas) and every product takes that path.

Which of these runs is numformer.ops.fast.dispatch's rows ("linear", "int8"), ("linear",
"bf16") and ("linear", "q4_1"). A kernel's sum is one fixed order of the terms, a tile's is BLAS's: the two differ in
the last bits of float32, as BLAS's own gemv and gemm do.
"""

from __future__ import annotations

import threading

import numpy as np

from numformer.ops import quant
from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA
from numformer.parallel.process import blas_single_threaded

ROWS = 16                       # rows of x up to which the row kernels run (measured: docs/performance.md)
PARALLEL_MIN = 1 << 20          # weights of a product that runs on numba's threads
TILE_BYTES = 1 << 18            # float32 bytes of a dequantized tile (an L2 cache's share)

_threads: tuple | None = None   # (parts, why): the row kernels' threads, decided on first use


def threads_line() -> str:
    """One line for reports: how many threads the row kernels use, and why."""
    k = dispatch.kernels()
    if k is None:
        return "no row kernels (numba not in use): dequantized tiles and np.matmul"
    parts, why = _row_threads(k)
    if parts > 1 and blas_single_threaded():
        return f"1 thread: NumPy's BLAS has one (else {parts}, {why})"
    return f"{parts} thread{'s' if parts > 1 else ''} for products of ≥ {PARALLEL_MIN:,} weights ({why})"


def _row_threads(k) -> tuple:
    global _threads
    if _threads is None:
        count, layer = k.threading_layer()
        if count < 2:
            _threads = (1, f"numba has {count} thread")
        elif layer not in ("omp", "tbb"):
            _threads = (1, f"numba's threading layer is {layer}; OpenMP or TBB would be used")
        else:
            _threads = (count, f"numba's {'OpenMP' if layer == 'omp' else 'TBB'} threads")
    return _threads


def _parts(k, weights: int) -> int:
    if weights < PARALLEL_MIN or blas_single_threaded() or threading.current_thread() is not threading.main_thread():
        return 1
    return _row_threads(k)[0]


def matmul(x2, w, bias=None):
    """x2 (M, K) float32 times deq(w)ᵀ, w quantized (N, K), plus bias (N,) on every row: (M, N)
    float32."""
    M, K = x2.shape
    N = w.shape[0]
    x2 = np.ascontiguousarray(x2, dtype=np.float32)
    k = dispatch.kernels() if dispatch.runs_weights("linear", w.format) == NUMBA else None
    if k is not None and M <= ROWS:
        y = np.empty((M, N), dtype=np.float32)
        parts = _parts(k, N * K)
        if isinstance(w, quant.Int8Blocks):
            if parts > 1:
                k.q8_rows_parallel(x2, w.q, w.d, y, parts)
            else:
                k.q8_rows(x2, w.q, w.d, y, 0, N)
        elif isinstance(w, quant.Q41Blocks):
            if parts > 1:
                k.q41_rows_parallel(x2, w.raw, y, parts)
            else:
                k.q41_rows(x2, w.raw, y, 0, N)
        elif parts > 1:
            k.bf16_rows_parallel(x2, w.bits, y, parts)
        else:
            k.bf16_rows(x2, w.bits, y, 0, N)
    else:
        y = np.empty((M, N), dtype=np.float32)
        for lo, tile in tiles(w, k):
            # (M, rows of the tile), the product a float32 weight gets; matmul's out= with these
            # columns of y would leave BLAS for NumPy's own loop (measured 7× slower)
            y[:, lo:lo + len(tile)] = x2 @ tile.T
    if bias is not None:
        y += bias
    return y


def matmul_t(dy2, w):
    """dy2 (M, N) float32 times deq(w), w quantized (N, K): (M, K) float32, by tiles."""
    k = dispatch.kernels() if dispatch.runs_weights("linear", w.format) == NUMBA else None
    dy2 = np.ascontiguousarray(dy2, dtype=np.float32)
    dx = np.zeros((dy2.shape[0], w.shape[1]), dtype=np.float32)
    for lo, tile in tiles(w, k):
        dx += dy2[:, lo:lo + len(tile)] @ tile                     # (M, K)
    return dx


def tiles(w, k=None):
    """(first row, deq(w)[first row : first row + R]) for consecutive tiles of R rows of w, R
    chosen so that a tile has about TILE_BYTES of float32; one buffer, rewritten for each tile.
    k: the compiled kernels, or None for NumPy's dequantization."""
    N, K = w.shape
    step = max(8, TILE_BYTES // (4 * K) // 8 * 8)
    buf = np.empty((min(step, N), K), dtype=np.float32)
    for lo in range(0, N, step):
        hi = min(lo + step, N)
        out = buf[:hi - lo]
        if k is None:
            out[...] = quant.rows(w, np.arange(lo, hi))
        elif isinstance(w, quant.Int8Blocks):
            k.q8_dequantize(w.q, w.d, lo, hi, out)
        elif isinstance(w, quant.Q41Blocks):
            k.q41_dequantize(w.raw, lo, hi, out)
        else:
            k.bf16_dequantize(w.bits, lo, hi, out)
        yield lo, out
