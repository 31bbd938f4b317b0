"""Compiled float32 kernels for the fast ops (numba, optional: `pip install 'numformer[jit]'`).
numformer.ops.fast.dispatch imports this module only when numba is installed and not switched off
(NUMFORMER_JIT=0); the ops call the kernels by name through dispatch.kernels().

Why a compiled layer at all: an elementwise formula in NumPy is a chain of whole-array passes
(the float32 GELU gate and its slope are a dozen, the exact one about thirty), each reading and
writing memory. A loop compiled once does the whole formula per element, in registers, in one
pass. It pays only if the compiler vectorises the loop, so the kernels are written for that:

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
float32; Φ is within 9 ulp, as in numformer.ops.erf (tests/ops/fast/test_kernels.py measures
both against float64 on dense grids).

The kernels are module-level functions, so that numba's on-disk cache (cache=True: in
__pycache__ beside this file, or in NUMBA_CACHE_DIR) finds them again in the next process (a
function made inside another is compiled afresh each time): only a machine's first run compiles.
Every process still pays numba's import and LLVM's start on its first kernel call, and their
memory; docs/performance.md has the figures, and NUMFORMER_JIT=0 saves both.
"""

import math
import platform

import llvmlite.binding as ll
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from numformer.ops.erf import PHI_P32, PHI_Q32, PHI_TOP32, ROUND16_32   # float32 Φ's form, as NumPy's

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
# exp(r) ≈ P(r) on |r| ≤ ln2/2
_EXP = (1.0000000005531853, 1.0000000362545531, 0.49999992085859296, 0.16666420463523385,
        0.041668225925047195, 0.008374792155748163, 0.001383674009437124)


@intrinsic
def _bits_as_float(typingctx, i):
    """The int32 i's bits read as a float32 (a register move, no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


f32 = np.float32

# -- 16 float32 lanes as one value (LLVM's <16 x float>), for the products with quantized weights:
# the kernels below say which lanes they load, multiply and add, so the compiler neither chooses
# nor reorders the sums (its loop vectoriser sums a row across lanes once per block of 32, where
# these keep the lanes apart to the row's end). One AVX-512 register; two AVX2 or four SSE ones
# elsewhere, the same lanes in the same order. Loads read C-contiguous arrays at a flat element
# offset (the kernels keep to the array's bounds; a non-contiguous array is refused by typing).

_V16 = ir.VectorType(ir.FloatType(), 16)
_I32X16 = ir.VectorType(ir.IntType(32), 16)
_B16 = ir.VectorType(ir.IntType(8), 16)


class _F32x16(types.Type):
    def __init__(self):
        super().__init__(name="f32x16")


F32X16 = _F32x16()


@register_model(_F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16)


def _c_array(t):
    return isinstance(t, types.Array) and t.layout == "C"


def _at(context, builder, aryty, ary, offset, pointee):
    """A pointer to `pointee` at ary's flat element offset."""
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [offset]), pointee.as_pointer())


@intrinsic
def v_zero(typingctx):
    """16 zeros."""
    return F32X16(), lambda context, builder, sig, args: ir.Constant(_V16, None)


@intrinsic
def v_load(typingctx, ary, offset):
    """ary[offset : offset + 16] (float32)."""
    if not (_c_array(ary) and ary.dtype == types.float32):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_at(context, builder, sig.args[0], args[0], args[1], _V16), align=4)
    return F32X16(ary, offset), codegen


@intrinsic
def v_int8(typingctx, ary, offset):
    """ary[offset : offset + 16] (int8) as float32 (exact)."""
    if not (_c_array(ary) and ary.dtype == types.int8):
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(builder.load(_at(context, builder, sig.args[0], args[0], args[1], _B16), align=1), _V16)
    return F32X16(ary, offset), codegen


@intrinsic
def v_nibbles(typingctx, ary, offset):
    """The 16 bytes ary[offset : offset + 16] (uint8) as (low four bits, high four bits), each 16
    float32 (exact)."""
    if not (_c_array(ary) and ary.dtype == types.uint8):
        return None

    def codegen(context, builder, sig, args):
        c = builder.zext(builder.load(_at(context, builder, sig.args[0], args[0], args[1], _B16), align=1), _I32X16)
        low = builder.uitofp(builder.and_(c, ir.Constant(_I32X16, [15] * 16)), _V16)
        high = builder.uitofp(builder.lshr(c, ir.Constant(_I32X16, [4] * 16)), _V16)
        return context.make_tuple(builder, sig.return_type, [low, high])
    return types.UniTuple(F32X16, 2)(ary, offset), codegen


def _splat(builder, s):
    v = builder.insert_element(ir.Constant(_V16, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, ir.Constant(_V16, ir.Undefined), ir.Constant(_I32X16, [0] * 16))


@intrinsic
def v_fma(typingctx, a, b, c):
    """a·b + c lane by lane, a a vector or a float32 (the same in every lane); fused into one
    rounding where the machine has FMA, as the kernels' "contract" allows."""
    if not (a in (F32X16, types.float32) and b == F32X16 and c == F32X16):
        return None

    def codegen(context, builder, sig, args):
        x = _splat(builder, args[0]) if sig.args[0] == types.float32 else args[0]
        return builder.fadd(builder.fmul(x, args[1], flags=("contract",)), args[2], flags=("contract",))
    return F32X16(a, b, c), codegen


@intrinsic
def v_mul(typingctx, a, b):
    """a·b lane by lane."""
    if not (a == F32X16 and b == F32X16):
        return None
    return F32X16(a, b), lambda context, builder, sig, args: builder.fmul(args[0], args[1])


@intrinsic
def v_sum(typingctx, a):
    """The sum of the 16 lanes, in a fixed order: lanes i and i + 8 added, then i and i + 4 of
    those, then i and i + 2, then the last two."""
    if a != F32X16:
        return None

    def codegen(context, builder, sig, args):
        v, n = args[0], 16
        while n > 1:
            n //= 2
            idx = ir.VectorType(ir.IntType(32), n)
            v = builder.fadd(builder.shuffle_vector(v, v, ir.Constant(idx, list(range(n)))),
                             builder.shuffle_vector(v, v, ir.Constant(idx, list(range(n, 2 * n)))))
        return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
    return types.float32(a), codegen


@intrinsic
def prefetch(typingctx, ary, offset):
    """Ask the memory system for the cache line holding ary's flat element `offset` (a hint: no
    value, no fault even past the array's end)."""
    if not _c_array(ary):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        i8p = ir.IntType(8).as_pointer()
        p = builder.bitcast(builder.gep(data, [args[1]]), i8p)
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])   # read, keep, data
        return context.get_dummy_value()
    return types.none(ary, offset), codegen


def _native_half() -> bool:
    """Whether the compiled code may convert float16 to float32 by the machine's instruction
    (x86's F16C, any AArch64): numba compiling for this machine's CPU (not a named one) and it
    has one."""
    if numba.config.CPU_NAME:
        return False
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    return machine in ("x86_64", "amd64") and bool(ll.get_host_cpu_features().get("f16c"))


NATIVE_HALF = _native_half()


@intrinsic
def _half_native(typingctx, ary, offset):
    """The float16 at byte offset of ary (uint8, little-endian) as float32, by the machine's
    conversion (exact)."""
    if not (_c_array(ary) and ary.dtype == types.uint8):
        return None

    def codegen(context, builder, sig, args):
        h = builder.load(_at(context, builder, sig.args[0], args[0], args[1], ir.IntType(16)), align=1)
        return builder.fpext(builder.bitcast(h, ir.HalfType()), ir.FloatType())
    return types.float32(ary, offset), codegen


# the constants, rounded to float32 once (numba freezes module globals into the code)
P0, P1, P2, P3, P4 = (f32(c) for c in PHI_P32)
Q0, Q1, Q2, Q3, Q4 = (f32(c) for c in PHI_Q32)
PHI_TOP, ROUND16 = f32(PHI_TOP32), f32(ROUND16_32)
X0, X1, X2, X3, X4, X5, X6 = (f32(c) for c in _EXP)
ONE, TWO, HALF, ZERO = f32(1.0), f32(2.0), f32(0.5), f32(0.0)
S, SC, TWO_S = f32(_SQRT_2_OVER_PI), f32(_SQRT_2_OVER_PI * _GELU_C), f32(2.0 * _SQRT_2_OVER_PI)
C3 = f32(3.0 * _GELU_C)
X2_MAX = f32(40.0 * 40.0)             # the float32 NumPy path's limit on x² in the slope
RSQRT2PI = f32(1.0 / math.sqrt(2.0 * math.pi))
LOG2E, LN2_HI, LN2_LO = f32(1.0 / math.log(2.0)), f32(0.693359375), f32(math.log(2.0) - 0.693359375)
EXP_LO, EXP_HI = f32(-87.0), f32(88.0)
ROUND = f32(1.5 * 2.0**23)            # adding and subtracting it rounds a float32 to an integer
INF = f32(np.inf)

_OPTS = dict(nogil=True, cache=True, error_model="numpy", fastmath=False)


@njit(**_OPTS)    # not inlined by numba: its operations keep these flags inside a reassociating caller
def exp(x):
    """e^x = 2^n · e^r, x = n·ln2 + r, |r| ≤ ln2/2; 0 below −87, inf above 88 (the float32
    range's edges, kept simple: e^−87 = 1.6e−38 is the smallest normal float32's size)."""
    c = x if not (x < EXP_LO) else EXP_LO
    c = c if not (c > EXP_HI) else EXP_HI
    n = (c * LOG2E + ROUND) - ROUND            # nearest integer to x / ln2
    r = (c - n * LN2_HI) - n * LN2_LO          # n·LN2_HI is exact: Cody and Waite's split
    p = (((((X6 * r + X5) * r + X4) * r + X3) * r + X2) * r + X1) * r + X0
    e = p * _bits_as_float((np.int32(n) + np.int32(127)) << np.int32(23))   # · 2^n
    e = e if not (x < EXP_LO) else ZERO
    return e if not (x > EXP_HI) else INF

# -- GELU, tanh form: s = ½ (1 + tanh u) = sigmoid(2u), u = √(2/π) (x + 0.044715 x³), written
# through e = exp(−|2u|) ≤ 1 as the float64 NumPy gate is: s = 1/(1 + e) for u ≥ 0, e/(1 + e)
# for u < 0, and s (1 − s) = e/(1 + e)², accurate in both tails (1 − tanh² u would cancel)


@njit(inline="always", **_OPTS)
def gate_tanh(x):
    x2 = x * x
    x2 = x2 if not (x2 > X2_MAX) else X2_MAX   # beyond, the gate is saturated; x³ stays finite
    z = TWO * (x * (S + SC * x2))
    e = exp(-abs(z))
    r = ONE / (ONE + e)
    s = r if not (z < ZERO) else e * r
    return s, e * (r * r), x2                  # s, s (1 − s), x²


@njit(inline="always", **_OPTS)
def slope_tanh(x, s, s1s, x2):
    return s + x * (TWO_S * s1s * (ONE + C3 * x2))     # ds/dx = 2 s (1 − s) · √(2/π) (1 + 3·0.044715 x²)


@njit(**_OPTS)
def gelu_tanh_forward(x, y):
    for i in range(x.size):
        s, s1s, x2 = gate_tanh(x[i])
        y[i] = x[i] * s


@njit(**_OPTS)
def gelu_tanh_output_and_slope(x, y, slope):
    for i in range(x.size):
        s, s1s, x2 = gate_tanh(x[i])
        y[i] = x[i] * s
        slope[i] = slope_tanh(x[i], s, s1s, x2)


@njit(**_OPTS)
def gelu_tanh_backward(x, dy, dx):
    for i in range(x.size):
        s, s1s, x2 = gate_tanh(x[i])
        dx[i] = dy[i] * slope_tanh(x[i], s, s1s, x2)

# -- GELU, exact form: s = Φ(x), ds/dx = φ(x) = exp(−x²/2)/√(2π). As numformer.ops.erf's
# float32 Φ: with b = |x|, Φ(−b) = ½ erfc(b/√2) = exp(−b²/2) · P(b)/Q(b), and Φ(x) is that
# for x < 0 and 1 − that for x ≥ 0, relatively accurate in both tails; exp(−b²/2) serves φ too


@njit(inline="always", **_OPTS)
def gate_exact(x):
    b = abs(x)
    b = b if not (b > PHI_TOP) else PHI_TOP       # Φ(−15.5) is 0 in float32; no inf/inf
    h = (b + ROUND16) - ROUND16                   # b to a multiple of 1/16: h² is exact
    e = exp(-HALF * (h * h)) * exp(-HALF * ((b - h) * (b + h)))    # exp(−b²/2), b² unrounded
    p = (((P4 * b + P3) * b + P2) * b + P1) * b + P0
    q = ((((b + Q4) * b + Q3) * b + Q2) * b + Q1) * b + Q0
    t = e * (p / q)                               # Φ(−|x|)
    return (t if x < ZERO else ONE - t), e


@njit(inline="always", **_OPTS)
def slope_exact(x, s, e):
    return s + x * (RSQRT2PI * e)


@njit(**_OPTS)
def gelu_exact_forward(x, y):
    for i in range(x.size):
        s, e = gate_exact(x[i])
        y[i] = x[i] * s


@njit(**_OPTS)
def gelu_exact_output_and_slope(x, y, slope):
    for i in range(x.size):
        s, e = gate_exact(x[i])
        y[i] = x[i] * s
        slope[i] = slope_exact(x[i], s, e)


@njit(**_OPTS)
def gelu_exact_backward(x, dy, dx):
    for i in range(x.size):
        s, e = gate_exact(x[i])
        dx[i] = dy[i] * slope_exact(x[i], s, e)

# -- LayerNorm over the rows of (R, C) arrays; row sums in float32, reassociated (vectorised)

_SUMS = dict(_OPTS, fastmath={"reassoc"})


@njit(**_SUMS)
def layernorm_forward(x, w, b, eps, xhat, rstd, y):
    R, C = x.shape
    inv_c = ONE / f32(C)
    for r in range(R):
        row = x[r]
        acc = ZERO
        for j in range(C):
            acc += row[j]
        mu = acc * inv_c
        acc = ZERO
        for j in range(C):
            d = row[j] - mu
            acc += d * d
        rs = ONE / np.sqrt(acc * inv_c + eps)
        rstd[r, 0] = rs
        for j in range(C):
            h = (row[j] - mu) * rs
            xhat[r, j] = h
            y[r, j] = h * w[j] + b[j]


@njit(**_OPTS)
def layernorm_output(xhat, w, b, y):
    R, C = xhat.shape
    for r in range(R):
        for j in range(C):
            y[r, j] = xhat[r, j] * w[j] + b[j]


@njit(**_SUMS)
def layernorm_backward(dy, xhat, rstd, w, dx, dw, db):
    """dx per row; dw, db (float32, zeroed by the caller) summed over the rows."""
    R, C = dy.shape
    inv_c = ONE / f32(C)
    for r in range(R):
        g, h = dy[r], xhat[r]
        m1 = ZERO
        m2 = ZERO
        for j in range(C):
            d = g[j] * w[j]
            m1 += d
            m2 += d * h[j]
            db[j] += g[j]
            dw[j] += g[j] * h[j]
        m1 *= inv_c
        m2 *= inv_c
        rs = rstd[r, 0]
        for j in range(C):
            dx[r, j] = rs * (g[j] * w[j] - m1 - h[j] * m2)

# -- RMSNorm over the rows of (R, C) arrays (numformer.ops.rmsnorm); row sums as LayerNorm's


@njit(**_SUMS)
def rmsnorm_forward(x, w, eps, xhat, rstd, y):
    R, C = x.shape
    inv_c = ONE / f32(C)
    for r in range(R):
        row = x[r]
        acc = ZERO
        for j in range(C):
            acc += row[j] * row[j]
        rs = ONE / np.sqrt(acc * inv_c + eps)
        rstd[r, 0] = rs
        for j in range(C):
            h = row[j] * rs
            xhat[r, j] = h
            y[r, j] = h * w[j]


@njit(**_OPTS)
def rmsnorm_output(xhat, w, y):
    R, C = xhat.shape
    for r in range(R):
        for j in range(C):
            y[r, j] = xhat[r, j] * w[j]


@njit(**_SUMS)
def rmsnorm_backward(dy, xhat, rstd, w, dx, dw):
    """dx per row; dw (float32, zeroed by the caller) summed over the rows."""
    R, C = dy.shape
    inv_c = ONE / f32(C)
    for r in range(R):
        g, h = dy[r], xhat[r]
        m2 = ZERO
        for j in range(C):
            m2 += (g[j] * w[j]) * h[j]
            dw[j] += g[j] * h[j]
        m2 *= inv_c
        rs = rstd[r, 0]
        for j in range(C):
            dx[r, j] = rs * (g[j] * w[j] - h[j] * m2)

# -- SwiGLU's gate (numformer.ops.swiglu): h = SiLU(g) u, SiLU(g) = g σ(g), σ through
# e = exp(−|g|) ≤ 1 as the NumPy code has it: σ = 1/(1 + e) for g ≥ 0, e/(1 + e) below


@njit(inline="always", **_OPTS)
def sigmoid(g):
    e = exp(-abs(g))
    r = ONE / (ONE + e)
    return r if not (g < ZERO) else e * r


@njit(**_OPTS)
def swiglu_forward(g, u, h):
    for i in range(g.size):
        h[i] = (g[i] * sigmoid(g[i])) * u[i]


@njit(**_OPTS)
def swiglu_backward(g, u, dh, dg, du):
    for i in range(g.size):
        s = sigmoid(g[i])
        du[i] = dh[i] * (g[i] * s)                                   # dh ⊙ SiLU(g)
        dg[i] = (dh[i] * u[i]) * (s * (ONE + g[i] * (ONE - s)))      # dh ⊙ u ⊙ σ (1 + g (1 − σ))

# -- softmax over the rows of attention scores s (G, R, E): row i of group g sees the keys
# [0, n) with n = min(E, first + i, limit[g]) (first: the causal edge of row 0; limit: the
# real keys of g, or one number for every group); the rest of the row becomes 0. A row with
# n ≤ 0 is all zeros, with the statistics (0, 1), as the NumPy code makes them.


@njit(inline="always", **_OPTS)
def _row_max(row, n, lanes):
    """max(row[:n]) (−inf for n ≤ 0) in 16 lanes, which LLVM vectorises; a single running max
    would be a chain of dependent compares, which runs several times slower. NaN is skipped here, but a NaN in the
    row still reaches softmax_rows's output through its own exp."""
    lanes[:] = -INF
    full = n - n % 16 if n > 0 else 0
    for j in range(0, full, 16):
        for k in range(16):
            v = row[j + k]
            lanes[k] = v if v > lanes[k] else lanes[k]
    m = -INF
    for k in range(16):
        m = lanes[k] if lanes[k] > m else m
    for j in range(full, n):
        m = row[j] if row[j] > m else m
    return m


@njit(**_SUMS)
def softmax_rows(s, first, limit, row_max, inv_sum):
    G, R, E = s.shape
    lanes = np.empty(16, np.float32)
    for g in range(G):
        for i in range(R):
            n = min(E, first + i, limit[g if limit.size > 1 else 0])
            row = s[g, i]
            m = _row_max(row, n, lanes)
            m = m if n > 0 else ZERO
            acc = ZERO
            for j in range(n):
                e = exp(row[j] - m)
                row[j] = e
                acc += e
            inv = ONE / acc if n > 0 else ONE
            for j in range(n):
                row[j] *= inv
            for j in range(max(n, 0), E):
                row[j] = ZERO
            row_max[g, i] = m
            inv_sum[g, i] = inv


@njit(**_OPTS)
def softmax_again(s, first, limit, row_max, inv_sum):
    """P from the scores and softmax_rows' statistics: the same operations, the same bits."""
    G, R, E = s.shape
    for g in range(G):
        for i in range(R):
            n = min(E, first + i, limit[g if limit.size > 1 else 0])
            row = s[g, i]
            m, inv = row_max[g, i], inv_sum[g, i]
            for j in range(n):
                row[j] = exp(row[j] - m) * inv
            for j in range(max(n, 0), E):
                row[j] = ZERO


@njit(**_SUMS)
def softmax_backward_rows(p, dp):
    """dp ← p ⊙ (dp − Σ_j dp_j p_j) per row, in place: dS from dP and P."""
    G, R, E = p.shape
    for g in range(G):
        for i in range(R):
            a, b = p[g, i], dp[g, i]
            acc = ZERO
            for j in range(E):
                acc += a[j] * b[j]
            for j in range(E):
                b[j] = (b[j] - acc) * a[j]

# -- Adam's moment and parameter update (numformer.optim.adam), the NumPy code's operations
# in its order, each rounded to float32 as NumPy rounds it: the same bits in one pass


# -- RoPE's rotation (numformer.ops.fast.rope), y = x ⊙ cos + rotate_half(x) ⊙ sin for x (G, T, hs)
# of any strides: each element by the NumPy path's two operations in its order (no fused
# multiply-add), so the same bits, in one pass instead of six array operations.

@njit(**_OPTS)
def rope_rotate(x, cos, sin, y):
    G, T, hs = x.shape
    h = hs // 2
    for g in range(G):
        for t in range(T):
            for i in range(h):
                a, b = x[g, t, i], x[g, t, i + h]
                y[g, t, i] = a * cos[t, i] - b * sin[t, i]
                y[g, t, i + h] = b * cos[t, i + h] + a * sin[t, i + h]


@njit(**_OPTS)
def adam_update(p, g, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, bias2_sqrt, eps, step):
    for i in range(p.size):
        gi = g[i]
        mi = m[i] * beta1 + gi * one_minus_beta1            # m_t = β1 m_{t-1} + (1 − β1) g_t
        vi = v[i] * beta2 + (gi * gi) * one_minus_beta2     # v_t = β2 v_{t-1} + (1 − β2) g_t²
        m[i] = mi
        v[i] = vi
        p[i] -= mi / (np.sqrt(vi) / bias2_sqrt + eps) * step   # θ −= η m̂_t / (√v̂_t + ε)


@njit(**_OPTS)
def normal_cdf_array(x, out):
    for i in range(x.size):
        out[i] = gate_exact(x[i])[0]


@njit(**_OPTS)
def exp_array(x, out):
    for i in range(x.size):
        out[i] = exp(x[i])

# -- products with quantized weights (numformer.ops.quant), for decoding: y[m, n] = Σ_j x[m, j]
# deq(W)[n, j] for the rows n in [lo, hi) of W (N, K), read as they are stored: int8 values with
# a float32 scale per block of 32 (q, d), or bf16 bit patterns. float32 products and sums, each
# output one fixed order of the same terms.
#
# An int8 row is summed in 16 lanes (the f32x16 values above), lane i taking positions i and
# i + 16 of every block:
#     v = Σ_b d_b · (x_hi · q_hi + x_lo · q_lo),   x_lo, q_lo: a block's first 16, x_hi, q_hi: its last 16
#     y = v_sum(v)
# so that the one sum across lanes is at the row's end, not once per block. Eight rows of W at
# once, their lanes in eight registers, sharing the loads of x; a row's value depends neither on
# the rows beside it nor on how [lo, hi) was cut (the threaded kernels give one thread's bits). A
# row whose length is not a multiple of 32 ends in a short block, summed one term at a time and
# added after the lanes. While a group of 8 rows is summed, the next group's rows are asked for
# (prefetch), block by block: a weight that does not fit in the caches (a model's) streams from
# memory at about the rate the arithmetic takes it (measured: the Q4_1 products of SmolLM2's 30
# layers 5.6 -> 3.7 ms a token, 29 G weights/s, against 33 in cache). A bf16 row is one long sum,
# one row at a time.

_DOTS = dict(_OPTS, fastmath={"reassoc", "contract"})


@njit(inline="always", **_OPTS)
def bf16_value(h):
    """The float32 whose bits are the bf16 pattern h (uint16) followed by 16 zeros."""
    return _bits_as_float(np.int32(h) << np.int32(16))


@njit(inline="always", **_DOTS)
def _q8_block(q, at, s, xl, xh, v):
    """v + s · (xh · q[at+16 : at+32] + xl · q[at : at+16])."""
    return v_fma(s, v_fma(xh, v_int8(q, at + 16), v_mul(xl, v_int8(q, at))), v)


@njit(inline="always", **_DOTS)
def _q8_tail(x, q, d, m, r, full, K):
    """d · Σ x q over the short last block of row r (positions 32·full .. K−1)."""
    t = ZERO
    for j in range(32 * full, K):
        t += x[m, j] * f32(q[r, j])
    return d[r, full] * t


@njit(**_DOTS)
def q8_rows(x, q, d, y, lo, hi):
    M, K = x.shape
    full = K // 32                                  # blocks of 32; a shorter last one follows
    last = hi - 1
    for n in range(lo, hi, 8):
        r0, r1, r2, r3 = n, min(n + 1, last), min(n + 2, last), min(n + 3, last)
        r4, r5, r6, r7 = min(n + 4, last), min(n + 5, last), min(n + 6, last), min(n + 7, last)
        for m in range(M):
            v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = v_zero()
            for b in range(full):
                xl = v_load(x, m * K + 32 * b)
                xh = v_load(x, m * K + 32 * b + 16)
                o = 32 * b
                if m == 0:
                    for i in range(8):              # the same block of the next 8 rows, read next
                        prefetch(q, (n + 8 + i) * K + o)
                v0 = _q8_block(q, r0 * K + o, d[r0, b], xl, xh, v0)
                v1 = _q8_block(q, r1 * K + o, d[r1, b], xl, xh, v1)
                v2 = _q8_block(q, r2 * K + o, d[r2, b], xl, xh, v2)
                v3 = _q8_block(q, r3 * K + o, d[r3, b], xl, xh, v3)
                v4 = _q8_block(q, r4 * K + o, d[r4, b], xl, xh, v4)
                v5 = _q8_block(q, r5 * K + o, d[r5, b], xl, xh, v5)
                v6 = _q8_block(q, r6 * K + o, d[r6, b], xl, xh, v6)
                v7 = _q8_block(q, r7 * K + o, d[r7, b], xl, xh, v7)
            a0, a1, a2, a3 = v_sum(v0), v_sum(v1), v_sum(v2), v_sum(v3)
            a4, a5, a6, a7 = v_sum(v4), v_sum(v5), v_sum(v6), v_sum(v7)
            if K > 32 * full:                       # the short last block
                a0 += _q8_tail(x, q, d, m, r0, full, K)
                a1 += _q8_tail(x, q, d, m, r1, full, K)
                a2 += _q8_tail(x, q, d, m, r2, full, K)
                a3 += _q8_tail(x, q, d, m, r3, full, K)
                a4 += _q8_tail(x, q, d, m, r4, full, K)
                a5 += _q8_tail(x, q, d, m, r5, full, K)
                a6 += _q8_tail(x, q, d, m, r6, full, K)
                a7 += _q8_tail(x, q, d, m, r7, full, K)
            y[m, r0] = a0                           # rows past hi repeat the last one: not stored
            if n + 1 < hi:
                y[m, r1] = a1
            if n + 2 < hi:
                y[m, r2] = a2
            if n + 3 < hi:
                y[m, r3] = a3
            if n + 4 < hi:
                y[m, r4] = a4
            if n + 5 < hi:
                y[m, r5] = a5
            if n + 6 < hi:
                y[m, r6] = a6
            if n + 7 < hi:
                y[m, r7] = a7


@njit(**_DOTS)
def bf16_rows(x, w, y, lo, hi):
    M, K = x.shape
    for n in range(lo, hi):
        for m in range(M):
            s = ZERO
            for j in range(K):
                s += x[m, j] * bf16_value(w[n, j])
            y[m, n] = s


# The same products on numba's threads (its threading layer): the rows of W cut into `parts`
# ranges, each on a thread; every row is computed as by one thread.

@njit(parallel=True, **_DOTS)
def q8_rows_parallel(x, q, d, y, parts):
    groups = (q.shape[0] + 7) // 8
    for t in prange(parts):
        lo = 8 * (groups * t // parts)
        hi = min(q.shape[0], 8 * (groups * (t + 1) // parts))
        if lo < hi:
            q8_rows(x, q, d, y, lo, hi)


@njit(parallel=True, **_DOTS)
def bf16_rows_parallel(x, w, y, parts):
    N = w.shape[0]
    for t in prange(parts):
        bf16_rows(x, w, y, N * t // parts, N * (t + 1) // parts)


# Rows [lo, hi) of deq(W) written into out (hi − lo, K): a tile that a float32 product then takes
# (numformer.ops.quant's formulas: d · q in float32; the bf16 bits followed by 16 zeros).

@njit(**_OPTS)
def q8_dequantize(q, d, lo, hi, out):
    K = q.shape[1]
    full = K // 32
    for n in range(lo, hi):
        for b in range(full):
            s = d[n, b]
            for j in range(32 * b, 32 * b + 32):       # a constant count: vectorised
                out[n - lo, j] = s * f32(q[n, j])
        for j in range(32 * full, K):                   # the short last block
            out[n - lo, j] = d[n, full] * f32(q[n, j])


@njit(**_OPTS)
def bf16_dequantize(w, lo, hi, out):
    K = w.shape[1]
    for n in range(lo, hi):
        for j in range(K):
            out[n - lo, j] = bf16_value(w[n, j])


# -- products with weights kept in GGUF's Q4_1 blocks (numformer.ops.quant.Q41Blocks, the rows as
# a GGUF file stores them: per block of 32 values, 20 bytes: d and m as float16, then 16 bytes of
# nibbles, value j in the low four bits of byte j and value j+16 in its high four), deq = d·q + m.
# A row's sum is taken as
#     Σ_b Σ_j x_j (d_b q_j + m_b) = v_sum(Σ_b d_b · (x_hi · q_hi + x_lo · q_lo)) + Σ_b m_b · (Σ_j x_j)
# in 16 lanes as q8_rows (lane i: a block's values i and i + 16, the low and the high nibble of its
# byte i), with Σ_j x_j of each block computed once per row of x and shared by every row of W.
# Eight rows of W at once. d and m are converted from float16 by the machine's instruction where
# it has one (NATIVE_HALF), else by half_value; both are exact.

_LOW, _FOUR, _EIGHT = np.uint8(15), np.uint8(4), np.uint16(8)


@njit(inline="always", **_OPTS)
def half_value(lo, hi):
    """The float32 value of the finite float16 whose little-endian bytes are lo, hi (exact):
    a normal number by moving its fields, zero and subnormals as mantissa · 2^-24."""
    h = np.int32(np.uint16(lo) | (np.uint16(hi) << _EIGHT))
    sign = (h & np.int32(0x8000)) << np.int32(16)
    em = h & np.int32(0x7FFF)
    if em < np.int32(0x0400):
        small = f32(em) * f32(5.9604644775390625e-08)
        return -small if sign != 0 else small
    return _bits_as_float(np.int32(sign | ((em << np.int32(13)) + np.int32(0x38000000))))


@njit(inline="always", **_OPTS)
def _half_bits(raw, at):
    """The float16 at flat byte offset `at` of raw (N, R) uint8, by half_value."""
    r, c = at // raw.shape[1], at % raw.shape[1]
    return half_value(raw[r, c], raw[r, c + 1])


_half_at = _half_native if NATIVE_HALF else _half_bits


@njit(inline="always", **_DOTS)
def _q41_block(raw, at, xl, xh, t, v, a):
    """The block at flat byte offset `at` of raw: (v + d · (xh · high + xl · low), a + m · t)."""
    low, high = v_nibbles(raw, at + 4)
    return v_fma(_half_at(raw, at), v_fma(xh, high, v_mul(xl, low)), v), a + _half_at(raw, at + 2) * t


@njit(**_DOTS)
def q41_rows(x, raw, y, lo, hi):
    M, K = x.shape
    nb = K // 32
    R = raw.shape[1]                            # bytes a row: 20 nb
    last = hi - 1
    sx = np.empty(nb, dtype=np.float32)
    for m in range(M):
        for b in range(nb):                     # Σ_j x_j per block, for the minimums
            t = ZERO
            for j in range(32 * b, 32 * b + 32):
                t += x[m, j]
            sx[b] = t
        for n in range(lo, hi, 8):
            p0, p1, p2, p3 = n * R, min(n + 1, last) * R, min(n + 2, last) * R, min(n + 3, last) * R
            p4, p5, p6, p7 = min(n + 4, last) * R, min(n + 5, last) * R, min(n + 6, last) * R, min(n + 7, last) * R
            v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = v_zero()
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = ZERO
            for b in range(nb):
                xl = v_load(x, m * K + 32 * b)
                xh = v_load(x, m * K + 32 * b + 16)
                o, t = 20 * b, sx[b]
                for i in range(8):                  # the same block of the next 8 rows, read next
                    prefetch(raw, p0 + (8 + i) * R + o)
                v0, a0 = _q41_block(raw, p0 + o, xl, xh, t, v0, a0)
                v1, a1 = _q41_block(raw, p1 + o, xl, xh, t, v1, a1)
                v2, a2 = _q41_block(raw, p2 + o, xl, xh, t, v2, a2)
                v3, a3 = _q41_block(raw, p3 + o, xl, xh, t, v3, a3)
                v4, a4 = _q41_block(raw, p4 + o, xl, xh, t, v4, a4)
                v5, a5 = _q41_block(raw, p5 + o, xl, xh, t, v5, a5)
                v6, a6 = _q41_block(raw, p6 + o, xl, xh, t, v6, a6)
                v7, a7 = _q41_block(raw, p7 + o, xl, xh, t, v7, a7)
            y[m, n] = v_sum(v0) + a0                # rows past hi repeat the last one: not stored
            if n + 1 < hi:
                y[m, n + 1] = v_sum(v1) + a1
            if n + 2 < hi:
                y[m, n + 2] = v_sum(v2) + a2
            if n + 3 < hi:
                y[m, n + 3] = v_sum(v3) + a3
            if n + 4 < hi:
                y[m, n + 4] = v_sum(v4) + a4
            if n + 5 < hi:
                y[m, n + 5] = v_sum(v5) + a5
            if n + 6 < hi:
                y[m, n + 6] = v_sum(v6) + a6
            if n + 7 < hi:
                y[m, n + 7] = v_sum(v7) + a7


@njit(parallel=True, **_DOTS)
def q41_rows_parallel(x, raw, y, parts):
    groups = (raw.shape[0] + 7) // 8
    for t in prange(parts):
        lo = 8 * (groups * t // parts)
        hi = min(raw.shape[0], 8 * (groups * (t + 1) // parts))
        if lo < hi:
            q41_rows(x, raw, y, lo, hi)


@njit(**_OPTS)
def q41_dequantize(raw, lo, hi, out):
    """Rows [lo, hi) of deq(W) into out (hi − lo, K): d·q + m, float32, as numformer.ops.quant."""
    nb = raw.shape[1] // 20
    for n in range(lo, hi):
        for b in range(nb):
            o = 20 * b
            d = half_value(raw[n, o], raw[n, o + 1])
            mn = half_value(raw[n, o + 2], raw[n, o + 3])
            for j in range(16):
                c = raw[n, o + 4 + j]
                out[n - lo, 32 * b + j] = d * f32(c & _LOW) + mn
                out[n - lo, 32 * b + 16 + j] = d * f32(c >> _FOUR) + mn


@njit(parallel=True, **_OPTS)
def _launch(a):
    for i in prange(a.size):
        a[i] = i


def threading_layer() -> tuple[int, str]:
    """(numba's thread count, its threading layer: "omp", "tbb" or "workqueue"), after starting
    its threads once (numba chooses the layer then)."""
    _launch(np.empty(2, np.float32))
    return numba.get_num_threads(), numba.threading_layer()
