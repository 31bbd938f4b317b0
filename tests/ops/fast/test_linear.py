"""numformer.ops.fast.blas: MKL's gemm for the fast linear map, used only while NumPy's BLAS runs
on one thread, and equal to np.matmul up to float rounding in every operand layout it accepts.

The test extras install the mkl wheel on x86-64 Linux, so there MKL must load: a test fails,
rather than passes on NumPy alone, if it does not."""

import platform
import sys

import numpy as np
import pytest

from numformer.ops.fast import blas
from numformer.parallel import process

MKL_EXPECTED = platform.machine() == "x86_64" and sys.platform == "linux"   # as the test extras say


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach MKL's gemm (by dtype name); fails if MKL is expected but absent.
    Products of any size go to MKL meanwhile (MIN_WORK 1), so that small test matrices reach it."""
    monkeypatch.setattr(blas, "OFF", False)
    monkeypatch.setattr(blas, "MIN_WORK", 1)
    if not blas.available():
        assert not MKL_EXPECTED, f"MKL did not load: {blas.describe()}"
        pytest.skip("no MKL on this platform (the mkl wheel is x86-64 only)")
    counts = {}
    for dtype, fn in list(blas._STATE["gemm"].items()):
        def counted(*args, _fn=fn, _name=dtype.name):
            counts[_name] = counts.get(_name, 0) + 1
            return _fn(*args)
        monkeypatch.setitem(blas._STATE["gemm"], dtype, counted)
    return counts


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
        assert blas.in_use()
        for an, a in a_forms.items():
            for bn, b in b_forms.items():
                want = a.astype(np.float64) @ b.astype(np.float64)
                got = blas.matmul(a, b)
                assert got.dtype == dtype and got.shape == (37, 29)
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 10, err_msg=f"{an} @ {bn}")
                out = np.full((37, 29), np.nan, dtype)
                assert blas.matmul(a, b, out=out, bias=bias) is out
                np.testing.assert_allclose(out, want + bias, rtol=tol, atol=tol * 10, err_msg=f"{an} @ {bn} + bias")
    assert calls[np.dtype(dtype).name] == 2 * 16


def test_only_while_blas_runs_on_one_thread(calls):
    a, b = np.ones((8, 4), np.float32), np.ones((4, 3), np.float32)
    with process.blas_threads(2):
        assert not process.blas_single_threaded() and not blas.in_use()
        np.testing.assert_array_equal(blas.matmul(a, b), np.full((8, 3), 4, np.float32))
    assert calls == {}
    with process.blas_threads(1):
        assert process.blas_single_threaded()
        blas.matmul(a, b)
    assert calls == {"float32": 1}


def test_switched_off_and_unsuitable_operands_go_to_numpy(calls, monkeypatch):
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
            got = blas.matmul(a, b, out=out)
            np.testing.assert_allclose(got, want, rtol=1e-3)
            assert got.shape == want.shape
        assert calls == {}
        monkeypatch.setattr(blas, "OFF", True)
        assert not blas.in_use() and "NUMFORMER_BLAS=numpy" in blas.describe()
        blas.matmul(a32, b32)
        assert calls == {}


def test_mkl_starts_no_threads(calls):
    """The sequential layer: a product that OpenBLAS or a threaded MKL would split over cores
    leaves the process with the threads it had."""
    import os

    def threads():
        return len(os.listdir("/proc/self/task"))

    a = np.random.default_rng(2).standard_normal((512, 512)).astype(np.float32)
    with process.blas_threads(1):
        before = threads()
        blas.matmul(a, a)
        assert threads() == before
    assert calls == {"float32": 1}
    assert blas.describe().startswith("MKL ")


def test_the_fast_linear_map_uses_it(calls):
    """The fast linear map's three products go to MKL under the threaded step's BLAS setting, and
    give the reference op's values."""
    from numformer.ops import linear as reference
    from numformer.ops.fast import linear as fast

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    w = rng.standard_normal((6, 8)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    dy = rng.standard_normal((2, 5, 6)).astype(np.float32)
    y_ref, c_ref = reference.forward(x, w, b)
    grads_ref = reference.backward(dy, c_ref)
    with process.blas_threads(1):
        y, c = fast.forward(x, w, b, keep_input=False)
        grads = fast.backward(dy, c, x=x)
    assert calls == {"float32": 3}
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


def test_vectors_and_small_products_stay_with_numpy(calls, monkeypatch):
    """A matrix times a vector (one token's decoding step) goes to NumPy's gemv, and so does a
    product below MIN_WORK multiply-adds, where MKL's call costs more than it saves."""
    monkeypatch.setattr(blas, "MIN_WORK", 1 << 19)
    rng = np.random.default_rng(6)
    w = rng.standard_normal((384, 1152)).astype(np.float32)
    with process.blas_threads(1):
        blas.matmul(rng.standard_normal((1, 384)).astype(np.float32), w)        # M = 1
        blas.matmul(w, rng.standard_normal((1152, 1)).astype(np.float32))       # N = 1
        blas.matmul(rng.standard_normal((16, 384)).astype(np.float32), w[:, :65])   # 0.4 M multiply-adds
        assert calls == {}
        blas.matmul(rng.standard_normal((2, 384)).astype(np.float32), w)        # 0.9 M
    assert calls == {"float32": 1}


def test_threads_that_ask_at_once_all_wait_for_mkl(monkeypatch):
    """The first products of a threaded step come from several threads at once: none may take
    NumPy's product while another is still loading MKL (the bits would depend on timing)."""
    import threading
    import time

    if not MKL_EXPECTED:
        pytest.skip("no MKL on this platform (the mkl wheel is x86-64 only)")
    real, made = blas._open_mkl, []

    def slow_open():
        time.sleep(0.2)
        gemm, info = real()
        return {dt: (lambda *args, _fn=fn: (made.append(1), _fn(*args))[1]) for dt, fn in gemm.items()}, info

    monkeypatch.setattr(blas, "_STATE", {})
    monkeypatch.setattr(blas, "_open_mkl", slow_open)
    monkeypatch.setattr(blas, "OFF", False)
    a = np.ones((128, 128), np.float32)
    with process.blas_threads(1):
        threads = [threading.Thread(target=blas.matmul, args=(a, a)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(made) == 4
