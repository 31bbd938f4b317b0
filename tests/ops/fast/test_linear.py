"""The fast linear map's products (numformer.ops.fast.linear.matmul): MKL's gemm where
numformer.ops.fast.dispatch gives it the product (only while NumPy's BLAS runs on one thread,
two matrices, enough work), equal to np.matmul up to float rounding in every operand layout gemm
accepts; NumPy's matmul for the rest.

The test extras install the mkl wheel on x86-64 Linux, so there MKL must load: a test fails,
rather than passes on NumPy alone, if it does not."""

import os
import platform
import sys

import numpy as np
import pytest

from numformer.ops import linear as reference
from numformer.ops.fast import dispatch, linear, mkl
from numformer.ops.fast.dispatch import MKL, NUMPY
from numformer.parallel import process

MKL_EXPECTED = platform.machine() == "x86_64" and sys.platform == "linux"   # as the test extras say


@pytest.fixture
def calls(monkeypatch):
    """Counts the products MKL makes (by dtype name), with MKL on whatever NUMFORMER_BLAS says;
    fails if MKL is expected but absent. Products of any size go to MKL meanwhile (MIN_WORK 1),
    so that small test matrices reach it."""
    monkeypatch.setattr(dispatch, "MIN_WORK", 1)
    with dispatch.overridden(mkl=True) as decision:
        if not decision.gemm:
            assert not MKL_EXPECTED, f"MKL did not load: {dispatch.linear_line()}"
            pytest.skip("no MKL on this platform (the mkl wheel is x86-64 only)")
        counts = {}
        product = mkl.product

        def counted(gemm, a, *args, **kwargs):
            out = product(gemm, a, *args, **kwargs)
            if out is not None:
                counts[a.dtype.name] = counts.get(a.dtype.name, 0) + 1
            return out

        monkeypatch.setattr(mkl, "product", counted)
        yield counts


def _layouts(rng, rows, cols, dtype):
    """The same matrix in the layouts gemm reads in place: C-contiguous, transposed, rows spaced
    wider than they are long, and the transpose of that."""
    m = rng.standard_normal((rows, cols)).astype(dtype)
    wide = np.zeros((rows, cols + 3), dtype)
    wide[:, :cols] = m
    wide_t = np.zeros((cols, rows + 5), dtype)
    wide_t[:, :rows] = m.T
    return {"contiguous": m, "transposed": np.ascontiguousarray(m.T).T,
            "wide rows": wide[:, :cols], "wide transposed": wide_t[:, :rows].T}


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-13)], ids=["float32", "float64"])
def test_every_layout_matches_numpy(calls, dtype, tol):
    rng = np.random.default_rng(0)
    a_forms, b_forms = _layouts(rng, 37, 23, dtype), _layouts(rng, 23, 29, dtype)
    bias = rng.standard_normal(29).astype(dtype)
    with process.blas_threads(1):
        assert dispatch.runs("linear", a_forms["contiguous"]) == MKL
        for an, a in a_forms.items():
            for bn, b in b_forms.items():
                want = a.astype(np.float64) @ b.astype(np.float64)
                got = linear.matmul(a, b)
                assert got.dtype == dtype and got.shape == (37, 29)
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 10, err_msg=f"{an} @ {bn}")
                out = np.full((37, 29), np.nan, dtype)
                assert linear.matmul(a, b, out=out, bias=bias) is out
                np.testing.assert_allclose(out, want + bias, rtol=tol, atol=tol * 10, err_msg=f"{an} @ {bn} + bias")
    assert calls[np.dtype(dtype).name] == 2 * 16


def test_only_while_blas_runs_on_one_thread(calls):
    a, b = np.ones((8, 4), np.float32), np.ones((4, 3), np.float32)
    with process.blas_threads(2):
        assert not process.blas_single_threaded() and dispatch.linear_gemm(a, b) is None
        np.testing.assert_array_equal(linear.matmul(a, b), np.full((8, 3), 4, np.float32))
    assert calls == {}
    with process.blas_threads(1):
        assert process.blas_single_threaded()
        linear.matmul(a, b)
    assert calls == {"float32": 1}


def test_switched_off_and_unsuitable_operands_go_to_numpy(calls):
    rng = np.random.default_rng(1)
    a32, b32 = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    with process.blas_threads(1):
        checks = [
            (a32, b32.astype(np.float64), None),                    # mixed dtypes
            (a32.astype(np.float16), b32.astype(np.float16), None),  # no half-precision gemm
            (a32[::-1], b32, None),                                  # rows in reverse (a negative stride)
            (a32[:, ::2], b32[::2], None),                           # columns with a stride
            (a32[:0], b32, None),                                    # no rows
            (a32, b32, np.empty((4, 6), np.float32).T),              # out not C-contiguous
        ]
        for a, b, out in checks:
            want = np.matmul(a, b)
            got = linear.matmul(a, b, out=out)
            np.testing.assert_allclose(got, want, rtol=1e-3)
            assert got.shape == want.shape
        assert calls == {}
        with dispatch.overridden(mkl=False):
            assert dispatch.runs("linear", a32, b32) == NUMPY and dispatch.linear_gemm(a32, b32) is None
            assert dispatch.linear_line() == "NumPy's matmul (MKL switched off in this process)"
            linear.matmul(a32, b32)
        assert calls == {}


def test_mkl_starts_no_threads(calls):
    """The sequential layer: a product that OpenBLAS or a threaded MKL would split over cores
    leaves the process with the threads it had."""
    def threads():
        return len(os.listdir("/proc/self/task"))

    a = np.random.default_rng(2).standard_normal((512, 512)).astype(np.float32)
    with process.blas_threads(1):
        before = threads()
        linear.matmul(a, a)
        assert threads() == before
    assert calls == {"float32": 1}
    assert dispatch.linear_line().startswith("MKL's gemm while BLAS runs on one thread")


def test_the_fast_linear_map_uses_it(calls):
    """The fast linear map's three products go to MKL under the threaded step's BLAS setting, and
    give the reference op's values."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    w = rng.standard_normal((6, 8)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    dy = rng.standard_normal((2, 5, 6)).astype(np.float32)
    y_ref, c_ref = reference.forward(x, w, b)
    grads_ref = reference.backward(dy, c_ref)
    with process.blas_threads(1):
        y, c = linear.forward(x, w, b, keep_input=False)
        grads = linear.backward(dy, c, x=x)
    assert calls == {"float32": 3}
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


def test_vectors_and_small_products_stay_with_numpy(calls, monkeypatch):
    """A matrix times a vector (one token's decoding step) goes to NumPy's gemv, and so does a
    product below MIN_WORK multiply-adds, where MKL's call costs more than it saves."""
    monkeypatch.setattr(dispatch, "MIN_WORK", 1 << 19)
    rng = np.random.default_rng(6)
    w = rng.standard_normal((384, 1152)).astype(np.float32)
    with process.blas_threads(1):
        linear.matmul(rng.standard_normal((1, 384)).astype(np.float32), w)        # M = 1
        linear.matmul(w, rng.standard_normal((1152, 1)).astype(np.float32))       # N = 1
        linear.matmul(rng.standard_normal((16, 384)).astype(np.float32), w[:, :65])   # 0.4 M multiply-adds
        assert calls == {}
        linear.matmul(rng.standard_normal((2, 384)).astype(np.float32), w)        # 0.9 M
    assert calls == {"float32": 1}
