"""The products with quantized weights (numformer.ops.fast.quantized and its kernels) against
float64 on awkward shapes: input widths that are not a multiple of 32 (the last block of a row
is shorter: the row as if padded with zeros), output rows that are not a multiple of the kernel's
group of 8, one row, one input; the row kernels and the tiles on either side of ROWS; the
threaded kernels bit for bit equal to one thread; and when threads are used."""

import threading

import numpy as np
import pytest

from numformer.ops import quant
from numformer.ops.fast import dispatch, quantized

FORMATS = ["int8", "bf16"]
SHAPES = [(1, 1), (7, 31), (8, 32), (9, 33), (17, 100), (3, 65)]          # (N, K): rows, inputs


def float64_product(x, w, bias):
    """x deq(W)ᵀ + b in float64, deq(W) from ops.quant's formulas (checked bit for bit against
    exact arithmetic in the op table)."""
    return x.astype(np.float64) @ quant.dequantize(w).astype(np.float64).T + bias


@pytest.mark.parametrize("native", ["native", "numpy"])
@pytest.mark.parametrize("M", [1, 2, quantized.ROWS, quantized.ROWS + 1])
@pytest.mark.parametrize("N, K", SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_products_against_float64(fmt, N, K, M, native):
    rng = np.random.default_rng([N, K, M])
    w = quant.quantize(rng.standard_normal((N, K)), fmt)
    x = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    with dispatch.overridden(numba=native == "native"):
        y = quantized.matmul(x, w, b)
        dx = quantized.matmul_t(y, w)
    ref = float64_product(x, w, b)
    assert y.dtype == np.float32 and y.shape == (M, N)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    ref_dx = y.astype(np.float64) @ quant.dequantize(w).astype(np.float64)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5 * np.abs(ref_dx).max())


@pytest.mark.parametrize("parts", [2, 3, 5])
@pytest.mark.parametrize("fmt", FORMATS)
def test_threaded_kernels_equal_one_thread_bit_for_bit(fmt, parts):
    k = dispatch.kernels()
    rng = np.random.default_rng(parts)
    for N, K in [(50, 70), (9, 33), (64, 96)]:
        w = quant.quantize(rng.standard_normal((N, K)), fmt)
        x = rng.standard_normal((3, K)).astype(np.float32)
        one, many = np.empty((3, N), np.float32), np.full((3, N), np.nan, np.float32)
        if fmt == "int8":
            k.q8_rows(x, w.q, w.d, one, 0, N)
            k.q8_rows_parallel(x, w.q, w.d, many, parts)
        else:
            k.bf16_rows(x, w.bits, one, 0, N)
            k.bf16_rows_parallel(x, w.bits, many, parts)
        np.testing.assert_array_equal(many, one)
        # and a part of the rows alone gives those rows as the whole does
        part = np.full((3, N), np.nan, np.float32)
        lo, hi = 8, min(N, 24)
        if fmt == "int8":
            k.q8_rows(x, w.q, w.d, part, lo, hi)
        else:
            k.bf16_rows(x, w.bits, part, lo, hi)
        np.testing.assert_array_equal(part[:, lo:hi], one[:, lo:hi])
        assert np.isnan(part[:, :lo]).all() and np.isnan(part[:, hi:]).all()


def test_when_the_rows_run_on_threads(monkeypatch):
    """Only large products, only from the main thread, only while NumPy's BLAS has more than one
    thread, and only on a threading layer that several threads may call."""
    k = dispatch.kernels()
    monkeypatch.setattr(quantized, "_threads", (2, "numba's OpenMP threads"))
    monkeypatch.setattr(quantized, "blas_single_threaded", lambda: False)
    assert quantized._parts(k, quantized.PARALLEL_MIN) == 2
    assert quantized._parts(k, quantized.PARALLEL_MIN - 1) == 1
    seen = []
    t = threading.Thread(target=lambda: seen.append(quantized._parts(k, quantized.PARALLEL_MIN)))
    t.start()
    t.join()
    assert seen == [1]
    monkeypatch.setattr(quantized, "blas_single_threaded", lambda: True)
    assert quantized._parts(k, quantized.PARALLEL_MIN) == 1
    assert quantized.threads_line().startswith("1 thread")
    monkeypatch.setattr(quantized, "blas_single_threaded", lambda: False)
    monkeypatch.setattr(quantized, "_threads", None)
    monkeypatch.setattr(k, "threading_layer", lambda: (2, "workqueue"))
    assert quantized._parts(k, quantized.PARALLEL_MIN) == 1
    assert "workqueue" in quantized.threads_line()


def q41_weight(rng, N, K):
    """A Q4_1 weight (numformer.ops.quant.Q41Blocks) of N rows of K values, off centre, as
    llama.cpp's quantizer writes it; a few blocks with subnormal float16 scales."""
    w = rng.standard_normal((N, K)).astype(np.float32) + 0.5
    w[0, :32] *= 1e-6                                 # d and m subnormal in float16
    return quant.Q41Blocks(quant.block_quantize(w, "Q4_1"))


@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("N, K", [(1, 32), (7, 64), (9, 96), (17, 32), (24, 160)])
def test_q41_rows_against_float64(N, K, M):
    rng = np.random.default_rng([N, K, M, 41])
    w = q41_weight(rng, N, K)
    x = rng.standard_normal((M, K)).astype(np.float32)
    y = np.full((M, N), np.nan, np.float32)
    dispatch.kernels().q41_rows(x, w.raw, y, 0, N)
    ref = x.astype(np.float64) @ quant.dequantize(w).astype(np.float64).T
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("parts", [2, 3])
def test_q41_threaded_and_cut_rows_equal_one_thread_bit_for_bit(parts):
    k = dispatch.kernels()
    rng = np.random.default_rng(parts)
    w = q41_weight(rng, 50, 96)
    x = rng.standard_normal((2, 96)).astype(np.float32)
    one, many = np.empty((2, 50), np.float32), np.full((2, 50), np.nan, np.float32)
    k.q41_rows(x, w.raw, one, 0, 50)
    k.q41_rows_parallel(x, w.raw, many, parts)
    np.testing.assert_array_equal(many, one)
    part = np.full((2, 50), np.nan, np.float32)
    k.q41_rows(x, w.raw, part, 8, 29)
    np.testing.assert_array_equal(part[:, 8:29], one[:, 8:29])
    assert np.isnan(part[:, :8]).all() and np.isnan(part[:, 29:]).all()


def test_both_float16_conversions_are_exact():
    """The kernels read Q4_1's d and m by the machine's float16 conversion where it has one, else
    by half_value: both give NumPy's float32 of every finite float16, zeros and subnormals too."""
    from numba import njit
    k = dispatch.kernels()
    bits = np.arange(1 << 16, dtype=np.uint16)
    finite = np.isfinite(bits.view(np.float16))
    raw = bits[finite].view(np.uint8).reshape(-1, 2)           # one float16 a row, little-endian
    want = bits[finite].view(np.float16).astype(np.float32)

    def convert(half):
        @njit
        def run(raw, out):
            for i in range(raw.shape[0]):
                out[i] = half(raw, 2 * i)
        out = np.empty(len(raw), np.float32)
        run(raw, out)
        return out

    for half in ([k._half_native] if k.NATIVE_HALF else []) + [k._half_bits]:
        np.testing.assert_array_equal(convert(half).view(np.uint32), want.view(np.uint32))
