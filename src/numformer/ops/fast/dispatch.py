"""Which implementation each fast op runs: decided once per process, here, and reported
(`numformer check`, `numformer bench` and the benchmarks' headers print `report_lines()`).

A fast op may have more than one implementation of its formula:

- NumPy, always there: the fast op's own NumPy code, or the reference op's where the fast op
  adds nothing for that dtype;
- numba: compiled float32 kernels (numformer.ops.fast.kernels), with the optional numba
  (`pip install 'numformer[jit]'`);
- MKL: Intel MKL's gemm for the linear map's products (numformer.ops.fast.mkl), with the
  optional `mkl` wheel (`pip install 'numformer[mkl]'`, x86-64), where it is faster than NumPy's
  own BLAS on this machine: numformer.ops.fast.blas_choice measures both once per machine and
  keeps the answer in numformer's cache folder.

ROWS gives, for each op and dtype, the implementations it has, in order of preference. The first
time an op asks (or a report is made), each optional library is loaded once, or found missing,
broken or switched off, and each row takes the first of its implementations that is there. The
switches are read when numformer is imported: NUMFORMER_JIT=0 (no numba kernels; numba is then
never imported), NUMFORMER_BLAS=numpy (no MKL) and NUMFORMER_BLAS=mkl (MKL wherever it loads,
measured faster or not). Within a running process `overridden(...)` decides again for the length
of a `with` block (the tests use it).

An op asks `runs(op, *arrays)` and gets its row's choice for the arrays' dtype: NUMPY when the
arrays' dtypes differ or no row has theirs. It then calls the kernel by name, as in
`kernels().layernorm_forward(...)`. The linear map's products ask `linear_gemm(a, b, bias)`,
which adds the rule of when MKL pays, per product.

A new op, or a new dtype of an op (a weight format), is one more row; a new library, one more
loader in _LOADERS and its name in the rows that can use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from dataclasses import dataclass

import numpy as np

from numformer.ops.fast import blas_choice, mkl
from numformer.parallel.process import blas_single_threaded

NUMPY, NUMBA, MKL = "NumPy", "numba", "MKL"


@dataclass(frozen=True)
class Row:
    """One op at one dtype: what each implementation it has runs there, in order of preference
    (NumPy last: always there)."""

    op: str
    dtype: str
    ways: dict


# The linear map's products smaller than this many multiply-adds stay with NumPy even where
# MKL is loaded: MKL's call costs several µs more than NumPy's (ctypes and MKL's own dispatch),
# which a small product does not earn back (docs/performance.md, issue 12, has the break-even).
MIN_WORK = 1 << 19


_GEMM = "cblas_{} if ≥ {{min_work}} multiply-adds and BLAS on one thread, else np.matmul"

ROWS = (
    Row("gelu", "float32", {NUMBA: "kernels gelu_tanh_* or gelu_exact_*",
                            NUMPY: "½(1 + tanh u) as PyTorch, or Φ's float32 form; in slices"}),
    Row("gelu", "float64", {NUMPY: "gate through exp(−|2u|) or erfc; in slices"}),
    Row("layernorm", "float32", {NUMBA: "kernels layernorm_forward, _output, _backward",
                                 NUMPY: "the reference's operations, in place"}),
    Row("layernorm", "float64", {NUMPY: "the reference's operations, in place"}),
    Row("rmsnorm", "float32", {NUMBA: "kernels rmsnorm_forward, _output, _backward",
                               NUMPY: "the reference op"}),
    Row("rmsnorm", "float64", {NUMPY: "the reference op"}),
    Row("swiglu", "float32", {NUMBA: "kernels swiglu_forward, swiglu_backward",
                              NUMPY: "the reference op"}),
    Row("swiglu", "float64", {NUMPY: "the reference op"}),
    Row("rope", "float32", {NUMBA: "cos and sin tables kept per head size; kernel rope_rotate",
                            NUMPY: "cos and sin tables kept per head size; halves rotated in place"}),
    Row("rope", "float64", {NUMPY: "cos and sin tables kept per head size; halves rotated in place"}),
    Row("attention", "float32", {NUMBA: "kernels softmax_rows, _again, _backward_rows; NumPy's with "
                                        "dropout or a general mask",
                                 NUMPY: "softmax in blocks and causal chunks"}),
    Row("attention", "float64", {NUMPY: "softmax in blocks and causal chunks"}),
    Row("adam", "float32", {NUMBA: "kernel adam_update", NUMPY: "its passes per chunk"}),
    Row("adam", "float64", {NUMPY: "its passes per chunk"}),
    Row("linear", "float32", {MKL: _GEMM.format("sgemm"), NUMPY: "np.matmul"}),
    Row("linear", "float64", {MKL: _GEMM.format("dgemm"), NUMPY: "np.matmul"}),
    # quantized weights (numformer.ops.quant; numformer.ops.fast.quantized): keyed by format, not dtype
    Row("linear", "int8", {NUMBA: "kernels q8_rows for ≤ 16 rows; else dequantized tiles and np.matmul",
                           NUMPY: "dequantized tiles and np.matmul"}),
    Row("linear", "bf16", {NUMBA: "kernels bf16_rows for ≤ 16 rows; else dequantized tiles and np.matmul",
                           NUMPY: "dequantized tiles and np.matmul"}),
    Row("linear", "q4_1", {NUMBA: "kernels q41_rows for ≤ 16 rows; else dequantized tiles and np.matmul",
                           NUMPY: "dequantized tiles and np.matmul"}),
)

WEIGHT_FORMATS = ("int8", "bf16", "q4_1")   # rows for weights of these formats are keyed by the format's name


def _key(dtype: str):
    return dtype if dtype in WEIGHT_FORMATS else np.dtype(dtype)


def _switched_off(variable: str, words: tuple[str, ...]) -> bool:
    return os.environ.get(variable, "").strip().lower() in words


# The environment's switches, read once when numformer is imported.
SWITCHES = {NUMBA: ("NUMFORMER_JIT=0", _switched_off("NUMFORMER_JIT", ("0", "false", "no", "off", "numpy"))),
            MKL: ("NUMFORMER_BLAS=numpy", _switched_off("NUMFORMER_BLAS", ("numpy", "openblas", "0", "off", "no")))}
# NUMFORMER_BLAS=mkl: MKL wherever it loads, without asking which BLAS is faster here.
MKL_FORCED = os.environ.get("NUMFORMER_BLAS", "").strip().lower() == "mkl"


class Unavailable(Exception):
    """A library cannot be used here; the message says why."""


def _load_numba():
    """(the kernels module, "numba 0.68.1"). Imports numba, an optional dependency."""
    if importlib.util.find_spec("numba") is None:
        raise Unavailable("numba is not installed")
    try:
        import numba

        from numformer.ops.fast import kernels
    except Exception as e:   # installed but unusable (a broken llvmlite, say): run on NumPy, say why
        raise Unavailable(f"numba failed to load: {type(e).__name__}: {e}".splitlines()[0]) from None
    return kernels, f"numba {numba.__version__}"


def _load_mkl():
    """(the MKL binding, "MKL 2026.2 (sequential)")."""
    try:
        lib = mkl.load()
    except mkl.Unavailable as e:
        raise Unavailable(str(e)) from None
    return lib, f"MKL {lib.version} (sequential)"


_LOADERS = {NUMBA: _load_numba, MKL: _load_mkl}
MEASURED = "measured"         # _LOADED's entry for blas_choice's verdict


@dataclass(frozen=True)
class Choice:
    """What one row runs, and why that and not a preferred one."""

    op: str
    dtype: str
    runs: str                 # NUMPY, NUMBA or MKL
    what: str                 # what that implementation does for this op
    why: str


@dataclass(frozen=True)
class Decision:
    choices: tuple            # Choice per row of ROWS
    table: dict               # op -> {np.dtype: NUMPY, NUMBA or MKL}
    kernels: object           # the kernels module where numba is used, else None
    gemm: dict                # np.dtype -> MKL's gemm where MKL is used, else empty
    libraries: dict           # NUMBA / MKL -> (in use, "numba 0.68.1" or why not)


_LOCK = threading.Lock()
_LOADED: dict = {}            # NUMBA / MKL -> (handle, version text) or Unavailable; each loaded once;
                              # MEASURED -> blas_choice.Verdict or Unavailable
_decision: Decision | None = None


def _library(name: str, allowed: bool | None):
    """(handle or None, text): the library loaded once per process, unless switched off.
    allowed: None follows the environment's switch; False is a switch within this process."""
    variable, off = SWITCHES[name]
    if allowed is False:
        return None, f"{name} switched off in this process"
    if allowed is None and off:
        return None, variable
    if name not in _LOADED:
        try:
            _LOADED[name] = _LOADERS[name]()
        except Unavailable as e:
            _LOADED[name] = e
    loaded = _LOADED[name]
    return (None, str(loaded)) if isinstance(loaded, Unavailable) else loaded


def _measured():
    """blas_choice's verdict for this machine (read from the cache or measured, once per
    process), or Unavailable when MKL cannot be loaded to measure it."""
    if MEASURED not in _LOADED:
        def load_gemm():
            handle, text = _library(MKL, True)
            if handle is None:
                raise Unavailable(text)
            return handle.gemm[np.dtype(np.float32)]
        try:
            _LOADED[MEASURED] = blas_choice.verdict(load_gemm)
        except Unavailable as e:
            _LOADED[MEASURED] = e
    return _LOADED[MEASURED]


def _mkl(allowed: bool | None):
    """(MKL's handle or None, text) for the linear rows. allowed: True uses MKL wherever it loads
    (as NUMFORMER_BLAS=mkl does), False not at all; None follows the environment's switch and
    otherwise blas_choice's measurement, which leaves MKL unloaded where a cached answer says
    NumPy is faster."""
    _, off = SWITCHES[MKL]
    if allowed is False or (allowed is None and off):
        return _library(MKL, allowed)
    if allowed or MKL_FORCED:
        handle, text = _library(MKL, True)
        return handle, text + (", forced by NUMFORMER_BLAS=mkl" if handle is not None and not allowed else "")
    if mkl.find_mkl_rt() is None:
        return None, "the mkl wheel is not installed"
    measured = _measured()
    if isinstance(measured, Unavailable):
        return None, str(measured)
    if not measured.mkl_faster:
        slower = "slower" if measured.mkl_ms > measured.numpy_ms else f"less than {1 - blas_choice.MARGIN:.0%} faster"
        return None, f"MKL {blas_choice.mkl_version()} is {slower} here: {measured.why()}; NUMFORMER_BLAS=mkl forces it"
    handle, text = _library(MKL, True)
    return handle, (f"{text}, faster here: {measured.why()}" if handle is not None else text)


def _decide(allow_numba: bool | None = None, allow_mkl: bool | None = None) -> Decision:
    """Each row's first implementation whose library is there (NumPy always is); for MKL, there
    and faster on this machine (_mkl)."""
    libraries = {NUMBA: _library(NUMBA, allow_numba), MKL: _mkl(allow_mkl)}
    min_work = f"2^{MIN_WORK.bit_length() - 1}" if MIN_WORK & (MIN_WORK - 1) == 0 else f"{MIN_WORK:,}"
    choices, table = [], {}
    for row in ROWS:
        runs = next(way for way in row.ways if way == NUMPY or libraries[way][0] is not None)
        skipped = [libraries[way][1] for way in row.ways if way != NUMPY and libraries[way][0] is None]
        if runs != NUMPY:
            why = libraries[runs][1]
        elif skipped:
            why = "; ".join(skipped)
        else:
            why = f"no kernel for {row.dtype}" if row.dtype != "float64" else "float64 has no kernel"
        choices.append(Choice(row.op, row.dtype, runs, row.ways[runs].format(min_work=min_work), why))
        table.setdefault(row.op, {})[_key(row.dtype)] = runs
    handle = {name: lib[0] for name, lib in libraries.items()}
    gemm = handle[MKL].gemm if handle[MKL] is not None else {}
    return Decision(tuple(choices), table, handle[NUMBA], gemm,
                    {name: (lib[0] is not None, lib[1]) for name, lib in libraries.items()})


def decision() -> Decision:
    """The decision, made on the first call (under a lock: the threads of a training step that
    ask at once all wait for the same answer, so none runs NumPy while another loads MKL)."""
    global _decision
    if _decision is None:
        with _LOCK:
            if _decision is None:
                _decision = _decide()
    return _decision


@contextlib.contextmanager
def overridden(*, numba: bool | None = None, mkl: bool | None = None):
    """Within the block, decide again with numba and MKL allowed (True, where they load, MKL
    measured faster or not), switched off (False) or as the environment and, for MKL, the
    measurement say (None); the decision before comes back afterwards. For tests and
    comparisons within one process; not thread-safe against ops running meanwhile."""
    global _decision
    before = decision()
    with _LOCK:
        _decision = _decide(numba, mkl)
    try:
        yield _decision
    finally:
        _decision = before


def runs(op: str, *arrays) -> str:
    """NUMPY, NUMBA or MKL: what `op` runs for these arrays (all of one dtype; else NUMPY). A
    None among them (an optional input left out: LayerNorm without γ, say) is passed over."""
    chosen = _decision or decision()
    dtype = arrays[0].dtype
    for a in arrays[1:]:
        if a is not None and a.dtype != dtype:
            return NUMPY
    return chosen.table[op].get(dtype, NUMPY)


def runs_weights(op: str, fmt: str) -> str:
    """NUMPY or NUMBA: what `op` runs for a weight quantized as `fmt` ("int8", "bf16")."""
    return (_decision or decision()).table[op].get(fmt, NUMPY)


def kernels():
    """The compiled kernels (numformer.ops.fast.kernels) where numba is used, else None. Ops call
    them by name after runs() said NUMBA."""
    return (_decision or decision()).kernels


def linear_gemm(a, b):
    """MKL's gemm for the product a @ b, or None for NumPy's matmul. MKL makes it when
    the linear row gives MKL for the operands' dtype, the product is of two matrices (M and N
    above 1; a matrix times a vector, one token's decoding step, goes to NumPy's gemv, which is
    faster there) of at least MIN_WORK multiply-adds, and NumPy's BLAS runs on one thread at the
    moment (parallel.process.limit_blas_threads(1): the threaded training step, the sentence
    encoder's batches, `numformer sample`, an MPI rank with one core): MKL is loaded sequential,
    so it replaces one thread of OpenBLAS, and where OpenBLAS runs on every core it keeps them."""
    M, K = a.shape
    N = b.shape[1]
    if M < 2 or N < 2 or M * N * K < MIN_WORK or not blas_single_threaded():
        return None
    if runs("linear", a, b) != MKL:
        return None
    return (_decision or decision()).gemm[a.dtype]


def report() -> tuple:
    """The Choice of every row."""
    return decision().choices


def report_lines(choices=None) -> list[str]:
    """The report as an aligned table, one line per op and dtype: of this process, or of
    `choices` (report()'s rows as dicts, as a benchmark stores them)."""
    header = ("op", "dtype", "runs", "what", "why")
    rows = report() if choices is None else choices
    body = [tuple(c[k] for k in header) if isinstance(c, dict) else (c.op, c.dtype, c.runs, c.what, c.why)
            for c in rows]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in (header, rule, *body)]


def kernels_line() -> str:
    """One line for reports: which compiled kernels the fast ops run, or why none."""
    in_use, text = decision().libraries[NUMBA]
    if not in_use:
        return f"NumPy only ({text})"
    return f"{text} (float32 GELU, LayerNorm, RMSNorm, SwiGLU, attention softmax, Adam update)"


def linear_line() -> str:
    """One line for reports: which BLAS makes the fast linear map's products, or why only NumPy's."""
    in_use, text = decision().libraries[MKL]
    if not in_use:
        return f"NumPy's matmul ({text})"
    return f"MKL's gemm while BLAS runs on one thread, else NumPy's matmul ({text})"
