"""numformer.ops.fast.dispatch: which implementation each fast op runs, decided once, its report,
and the switches that change it (the environment's, read at import, and overridden() within a
process). numba and, on x86-64 Linux, MKL are in the test extras, so both must load here."""

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numformer
from numformer.ops.fast import dispatch, kernels, quantized
from numformer.ops.fast.dispatch import MKL, NUMBA, NUMPY, ROWS
from numformer.parallel import process

MKL_EXPECTED = platform.machine() == "x86_64" and sys.platform == "linux"   # as the test extras say


def run_python(code, **env):
    """Run code in a fresh interpreter with the environment's NUMFORMER_* switches replaced by env;
    its stdout."""
    clean = {k: v for k, v in os.environ.items() if k not in ("NUMFORMER_JIT", "NUMFORMER_BLAS")}
    result = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def by_row(decision):
    return {(c.op, c.dtype): c for c in decision.choices}


def test_every_row_takes_its_first_implementation_that_loads():
    with dispatch.overridden(numba=True, mkl=True) as decision:
        rows = by_row(decision)
        assert list(rows) == [(r.op, r.dtype) for r in ROWS]
        for op in ("gelu", "layernorm", "attention", "adam"):
            assert rows[op, "float32"].runs == NUMBA and rows[op, "float32"].why.startswith("numba ")
            assert rows[op, "float64"].runs == NUMPY and rows[op, "float64"].why == "float64 has no kernel"
        linear = MKL if MKL_EXPECTED else NUMPY
        assert rows["linear", "float32"].runs == rows["linear", "float64"].runs == linear
        assert decision.kernels is kernels


def test_switched_off_every_row_runs_numpy_and_says_why():
    with dispatch.overridden(numba=False, mkl=False) as decision:
        rows = by_row(decision)
        assert {c.runs for c in decision.choices} == {NUMPY}
        assert rows["gelu", "float32"].why == "numba switched off in this process"
        assert rows["linear", "float32"].why == "MKL switched off in this process"
        assert rows["layernorm", "float64"].why == "float64 has no kernel"
        assert decision.kernels is None and decision.gemm == {}
        assert dispatch.kernels_line() == "NumPy only (numba switched off in this process)"


def test_the_decision_before_comes_back_after_an_override():
    before = dispatch.decision()
    with dispatch.overridden(numba=False):
        assert dispatch.decision() is not before
    assert dispatch.decision() is before


def test_ops_ask_by_dtype_and_mixed_dtypes_run_numpy():
    f32, f64, f16 = np.zeros(3, np.float32), np.zeros(3, np.float64), np.zeros(3, np.float16)
    with dispatch.overridden(numba=True, mkl=True):
        assert dispatch.runs("gelu", f32) == NUMBA
        assert dispatch.runs("gelu", f32, f32) == NUMBA
        assert dispatch.runs("gelu", f32, f64) == NUMPY         # dx = dy ⊙ slope with a float64 dy, say
        assert dispatch.runs("gelu", f64) == NUMPY
        assert dispatch.runs("gelu", f16) == NUMPY              # no row for float16
    with pytest.raises(KeyError):
        dispatch.runs("no such op", f32)


def test_linear_gemm_rule():
    """MKL for a product of two matrices of at least MIN_WORK multiply-adds while BLAS runs on one
    thread; NumPy for a matrix times a vector, a small product, or BLAS on several threads."""
    if not MKL_EXPECTED:
        pytest.skip("no MKL on this platform (the mkl wheel is x86-64 only)")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((384, 1152)).astype(np.float32)
    x = rng.standard_normal((16, 384)).astype(np.float32)     # 16·384·1152 = 7.1 M multiply-adds
    with dispatch.overridden(mkl=True) as decision:
        with process.blas_threads(1):
            assert dispatch.linear_gemm(x, w) is decision.gemm[np.dtype(np.float32)]
            assert dispatch.linear_gemm(x.astype(np.float64), w.astype(np.float64)) is decision.gemm[np.dtype(np.float64)]
            assert dispatch.linear_gemm(x[:1], w) is None                      # M = 1: a decoding step
            assert dispatch.linear_gemm(w.T, x[:1].T) is None                  # N = 1
            assert dispatch.linear_gemm(x, w[:, :65]) is None                  # 0.4 M < MIN_WORK
            assert dispatch.linear_gemm(x, w.astype(np.float64)) is None       # mixed dtypes
        with process.blas_threads(2):
            assert dispatch.linear_gemm(x, w) is None
    with dispatch.overridden(mkl=False), process.blas_threads(1):
        assert dispatch.linear_gemm(x, w) is None


def test_report_lines_are_a_table_of_every_row():
    lines = dispatch.report_lines()
    assert lines[0].split() == ["op", "dtype", "runs", "what", "why"]
    assert set(lines[1]) == {"-", " "}
    assert len(lines) == 2 + len(ROWS)
    for line, row in zip(lines[2:], ROWS):
        assert line.split()[:2] == [row.op, row.dtype]
    stored = [dict(op=c.op, dtype=c.dtype, runs=c.runs, what=c.what, why=c.why) for c in dispatch.report()]
    assert dispatch.report_lines(stored) == lines              # from a benchmark's stored header too


# The linear maps' BLAS without NUMFORMER_BLAS: MKL or NumPy's, whichever this machine measured
# faster (tests/ops/fast/test_blas_choice.py tests the rule), and the report gives the two times.
MEASURED = (r"(MKL's gemm while BLAS runs on one thread, else NumPy's matmul \(MKL [0-9.]+ \(sequential\), faster here"
            r"|NumPy's matmul \(MKL [0-9.]+ is (slower|less than 3% faster) here): MKL [0-9.]+ ms, NumPy [0-9.]+ ms "
            if MKL_EXPECTED else r"NumPy's matmul \(the mkl wheel is not installed\)")
FORCED = r"MKL's gemm while BLAS runs on one thread, else NumPy's matmul \(MKL [0-9.]+ \(sequential\), forced by NUMFORMER_BLAS=mkl\)"


@pytest.mark.parametrize("env, numba, mkl", [
    ({}, "numba ", MEASURED),
    ({"NUMFORMER_JIT": "0"}, "NumPy only (NUMFORMER_JIT=0)", MEASURED),
    ({"NUMFORMER_JIT": "off", "NUMFORMER_BLAS": "numpy"}, "NumPy only (NUMFORMER_JIT=0)",
     r"NumPy's matmul \(NUMFORMER_BLAS=numpy\)"),
    ({"NUMFORMER_JIT": "1", "NUMFORMER_BLAS": "mkl"}, "numba ", FORCED if MKL_EXPECTED else MEASURED),
])
def test_the_environment_switches_them_at_import(env, numba, mkl):
    """NUMFORMER_JIT=0 and NUMFORMER_BLAS=numpy|mkl, read when numformer is imported; switched off,
    numba is never imported at all (its import and LLVM cost time and memory)."""
    code = ("import json, sys; from numformer.ops.fast import dispatch; "
            "print(json.dumps([dispatch.kernels_line(), dispatch.linear_line(), 'numba' in sys.modules]))")
    kernels_line, linear_line, numba_imported = json.loads(run_python(code, **env))
    assert kernels_line.startswith(numba) and re.match(mkl, linear_line), linear_line
    assert numba_imported == kernels_line.startswith("numba ")


def test_a_numba_that_fails_to_load_leaves_numpy_running():
    """numba installed but unusable (a broken llvmlite, say): the fast ops run NumPy's code, the
    same bits as with numba switched off, and the report says why, instead of numformer failing."""
    gelu_bits = ("import hashlib, numpy as np; from numformer.ops.fast import gelu; "
                 "x = np.random.default_rng(6).normal(size=1000).astype(np.float32); "
                 "print(hashlib.sha256(gelu.forward(x)[0].tobytes()).hexdigest())")
    broken = ("import sys; sys.modules['numformer.ops.fast.kernels'] = None; "   # its import now raises ImportError
              "from numformer.ops.fast import dispatch; print(dispatch.kernels_line()); " + gelu_bits)
    line, bits = run_python(broken).split("\n")[:2]
    assert line.startswith("NumPy only (numba failed to load: ModuleNotFoundError: ")
    assert bits == run_python(gelu_bits, NUMFORMER_JIT="0").strip()
    assert bits != run_python(gelu_bits).strip()              # the kernels give other last bits


def test_threads_that_ask_at_once_all_wait_for_the_decision():
    """The first products of a threaded step come from several threads at once: none may take
    NumPy's product while another is still loading MKL (the bits would depend on timing)."""
    if not MKL_EXPECTED:
        pytest.skip("no MKL on this platform (the mkl wheel is x86-64 only)")
    code = """
import threading, time
import numpy as np
from numformer.ops.fast import linear, mkl
from numformer.parallel.process import blas_threads

made, load = [], mkl.load

def slow_load():                    # MKL takes its time to load; every product must still reach it
    time.sleep(0.2)
    lib = load()
    return mkl.Mkl(lib.version, {dt: (lambda *a, _fn=fn: (made.append(1), _fn(*a))[1]) for dt, fn in lib.gemm.items()})

mkl.load = slow_load
a = np.ones((128, 128), np.float32)
with blas_threads(1):
    threads = [threading.Thread(target=linear.matmul, args=(a, a)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(len(made))
"""
    assert run_python(code, NUMFORMER_BLAS="mkl").strip() == "4"     # MKL however fast it is here


def test_kernels_are_called_by_name():
    """Every kernel the fast ops run is named where it is called (no name built at run time), so a
    search for its name finds its callers."""
    src = Path(numformer.__file__).parent
    callers = "\n".join(p.read_text() for p in [*(src / "ops" / "fast").glob("*.py"), src / "optim" / "adam.py"]
                        if p.name != "kernels.py")
    for name in ("gelu_tanh_forward", "gelu_tanh_output_and_slope", "gelu_tanh_backward", "gelu_exact_forward",
                 "gelu_exact_output_and_slope", "gelu_exact_backward", "layernorm_forward", "layernorm_output",
                 "layernorm_backward", "softmax_rows", "softmax_again", "softmax_backward_rows", "adam_update"):
        assert callable(getattr(kernels, name))
        assert re.search(rf"\.{name}\b", callers), f"no caller names the kernel {name}"


def test_the_quantized_rows_say_how_many_rows_their_kernels_take():
    rows = {(r.op, r.dtype): r for r in dispatch.ROWS}
    for fmt in ("int8", "bf16"):
        assert f"≤ {quantized.ROWS} rows" in rows[("linear", fmt)].ways[dispatch.NUMBA]
