"""Compiled float32 kernels for the fast ops, with numba when it is installed (`pip install
'numformer[jit]'`); without it, or with NUMFORMER_JIT=0 in the environment when numformer is
imported (or `jit.OFF = True` in a running process), every fast op runs its NumPy code and
nothing here is used.

Why a compiled layer at all: an elementwise formula in NumPy is a chain of whole-array passes
(the float32 GELU gate and its slope are a dozen, the exact one about thirty), each reading and
writing memory. A loop compiled once does the whole formula per element, in registers, in one
pass. It pays only if the compiler vectorises the loop, so the kernels (ops/fast/_kernels.py)
are written for that:

- no calls to math functions: LLVM turns a call to exp into a scalar library call per element
  (numba has no vector math library here), so exp is a polynomial scaled by a power of two
  built from its bits, and Φ the rational form numformer.ops.erf evaluates in float32;
- clamps are written `u if not (u > c) else c`, so that NaN passes through them (a NaN loss must
  still be seen), and with no fast-math flags the compiler may not assume it away;
- no fused multiply-add contraction and no reassociation in the elementwise kernels, so that a
  kernel gives the same bits every time it is called (GELU's output_and_slope must give forward's
  output again bit for bit); the row sums of LayerNorm and softmax allow reassociation, which
  vectorises them.

exp's polynomial comes from tools/fit_kernel_coefficients.py (least squares on the relative
error, reweighted): within 1.9e-9 on [−ln2/2, ln2/2] in float64, and within 2 ulp evaluated in
float32; Φ is within 9 ulp, as in numformer.ops.erf (tests/ops/test_jit.py measures both
against float64 on dense grids).

Compiled code is cached on disk (numba's cache=True: in __pycache__ beside _kernels.py, or in
NUMBA_CACHE_DIR), so only the first run on a machine compiles (about 2 s for a training step's
kernels). Every process still pays about 0.4 s for numba's import and LLVM's start on its first
kernel call, and numba and LLVM take about 120 MiB of its memory; NUMFORMER_JIT=0 saves both.
"""

from __future__ import annotations

import os

import numpy as np


def _off_by_environment() -> bool:
    return os.environ.get("NUMFORMER_JIT", "1").strip().lower() in ("0", "false", "no", "off", "numpy")


# True when the kernels are switched off: NUMFORMER_JIT=0 when numformer was imported. Read once,
# because the fast ops ask on every call (a KV-cached decoding step makes dozens of calls); a
# running process (a test, say) switches them by setting this.
OFF = _off_by_environment()

_KERNELS = None          # the compiled kernels, once built
_TRIED = False           # whether _build() has run (numba may be missing)
_STATE: dict = {}        # "error": why numba, though installed, could not be used
_F32 = np.dtype(np.float32)


def enabled() -> bool:
    """True when numba is importable and the kernels are not switched off (OFF): the fast ops
    then call the kernels (kernels()) for float32 arrays."""
    global _KERNELS, _TRIED
    if OFF:
        return False
    if not _TRIED:
        try:
            _KERNELS = _build()
        except ImportError:
            _KERNELS = None
        except Exception as e:    # numba present but unusable (a broken llvmlite, say): run on NumPy
            _KERNELS = None
            _STATE["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        _TRIED = True
    return _KERNELS is not None


def describe() -> str:
    """One line for reports: which kernels the fast ops run."""
    if OFF:
        return "NumPy only (switched off: NUMFORMER_JIT=0)"
    if not enabled():
        if "error" in _STATE:
            return f"NumPy only (numba failed to load: {_STATE['error']})"
        return "NumPy only (numba not installed)"
    import numba

    return f"numba {numba.__version__} (float32 GELU, LayerNorm, attention softmax, Adam update)"


def kernels():
    """The kernels' module (numformer.ops.fast._kernels); call enabled() first."""
    return _KERNELS


def usable(*arrays) -> bool:
    """True when the kernels can take these arrays: kernels on, every one float32."""
    if OFF or (_KERNELS is None and (_TRIED or not enabled())):
        return False
    for a in arrays:
        if a.dtype != _F32:
            return False
    return True


def _build():
    """The kernels module (compiled on first use of each kernel, or loaded from numba's cache);
    ImportError when numba is missing."""
    from numformer.ops.fast import _kernels

    return _kernels
