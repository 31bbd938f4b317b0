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

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

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
# a float32 scale per block of 32 (q, d), or bf16 bit patterns. float32 products and sums; the
# sums are reassociated (vectorised), so each output is one fixed order of the same terms. An
# int8 row's blocks are summed one at a time, Σ_b d_b · (Σ_j x_j q_j): eight rows of W at once,
# sharing the loads of x, which LLVM vectorises where one row at a time it does not (a block's 32
# terms are too short a loop); a group of eight always starts at a multiple of eight, so a row's
# value does not depend on how [lo, hi) was cut. A bf16 row is one long sum, one row at a time.

_DOTS = dict(_OPTS, fastmath={"reassoc", "contract"})


@njit(inline="always", **_OPTS)
def bf16_value(h):
    """The float32 whose bits are the bf16 pattern h (uint16) followed by 16 zeros."""
    return _bits_as_float(np.int32(h) << np.int32(16))


@njit(**_DOTS)
def q8_rows(x, q, d, y, lo, hi):
    M, K = x.shape
    full = K // 32                                  # blocks of 32; a shorter last one follows
    last = hi - 1
    for n in range(lo, hi, 8):
        r0, r1, r2, r3 = n, min(n + 1, last), min(n + 2, last), min(n + 3, last)
        r4, r5, r6, r7 = min(n + 4, last), min(n + 5, last), min(n + 6, last), min(n + 7, last)
        for m in range(M):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = ZERO
            for b in range(full):
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
                for j in range(32 * b, 32 * b + 32):
                    v = x[m, j]
                    s0 += v * f32(q[r0, j])
                    s1 += v * f32(q[r1, j])
                    s2 += v * f32(q[r2, j])
                    s3 += v * f32(q[r3, j])
                    s4 += v * f32(q[r4, j])
                    s5 += v * f32(q[r5, j])
                    s6 += v * f32(q[r6, j])
                    s7 += v * f32(q[r7, j])
                a0 += d[r0, b] * s0
                a1 += d[r1, b] * s1
                a2 += d[r2, b] * s2
                a3 += d[r3, b] * s3
                a4 += d[r4, b] * s4
                a5 += d[r5, b] * s5
                a6 += d[r6, b] * s6
                a7 += d[r7, b] * s7
            if K > 32 * full:                      # the short last block
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
                for j in range(32 * full, K):
                    v = x[m, j]
                    s0 += v * f32(q[r0, j])
                    s1 += v * f32(q[r1, j])
                    s2 += v * f32(q[r2, j])
                    s3 += v * f32(q[r3, j])
                    s4 += v * f32(q[r4, j])
                    s5 += v * f32(q[r5, j])
                    s6 += v * f32(q[r6, j])
                    s7 += v * f32(q[r7, j])
                a0 += d[r0, full] * s0
                a1 += d[r1, full] * s1
                a2 += d[r2, full] * s2
                a3 += d[r3, full] * s3
                a4 += d[r4, full] * s4
                a5 += d[r5, full] * s5
                a6 += d[r6, full] * s6
                a7 += d[r7, full] * s7
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
# A row's sum is taken block by block,
#     Σ_j x_j (d q_j + m) = d · (Σ_j x_j q_j) + m · (Σ_j x_j),
# with Σ_j x_j of each block computed once per row of x and shared by every row of W; eight rows
# of W at once, sharing the loads of x, as q8_rows. A byte c's two nibbles are taken in float32,
# h = ⌊c/16⌋ and l = c − 16h (exact: c, c/16 and their floors are float32 numbers): numba widens
# integer masks and shifts to int64, which vectorise a quarter as wide (measured 1.3-1.6x slower).

_LOW, _FOUR, _EIGHT = np.uint8(15), np.uint8(4), np.uint16(8)
_SIXTEENTH, _SIXTEEN = f32(0.0625), f32(16.0)


@njit(inline="always", **_OPTS)
def _nibbles_dot(c, xl, xh):
    """xl · (c's low nibble) + xh · (c's high nibble), the nibbles taken in float32."""
    f = f32(c)
    h = np.floor(f * _SIXTEENTH)                # the high nibble
    return xl * (f - _SIXTEEN * h) + xh * h     # f − 16h: the low one


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


@njit(**_DOTS)
def q41_rows(x, raw, y, lo, hi):
    M, K = x.shape
    nb = K // 32
    last = hi - 1
    sx = np.empty(nb, dtype=np.float32)
    for mm in range(M):
        for b in range(nb):                     # Σ_j x_j per block, for the minimums
            t = ZERO
            for j in range(32 * b, 32 * b + 32):
                t += x[mm, j]
            sx[b] = t
        for n in range(lo, hi, 8):
            r0, r1, r2, r3 = n, min(n + 1, last), min(n + 2, last), min(n + 3, last)
            r4, r5, r6, r7 = min(n + 4, last), min(n + 5, last), min(n + 6, last), min(n + 7, last)
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = ZERO
            for b in range(nb):
                o = 20 * b + 4
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
                for j in range(16):
                    xl = x[mm, 32 * b + j]
                    xh = x[mm, 32 * b + 16 + j]
                    c0, c1, c2, c3 = raw[r0, o + j], raw[r1, o + j], raw[r2, o + j], raw[r3, o + j]
                    c4, c5, c6, c7 = raw[r4, o + j], raw[r5, o + j], raw[r6, o + j], raw[r7, o + j]
                    s0 += _nibbles_dot(c0, xl, xh)
                    s1 += _nibbles_dot(c1, xl, xh)
                    s2 += _nibbles_dot(c2, xl, xh)
                    s3 += _nibbles_dot(c3, xl, xh)
                    s4 += _nibbles_dot(c4, xl, xh)
                    s5 += _nibbles_dot(c5, xl, xh)
                    s6 += _nibbles_dot(c6, xl, xh)
                    s7 += _nibbles_dot(c7, xl, xh)
                t = sx[b]
                o = 20 * b
                a0 += half_value(raw[r0, o], raw[r0, o + 1]) * s0 + half_value(raw[r0, o + 2], raw[r0, o + 3]) * t
                a1 += half_value(raw[r1, o], raw[r1, o + 1]) * s1 + half_value(raw[r1, o + 2], raw[r1, o + 3]) * t
                a2 += half_value(raw[r2, o], raw[r2, o + 1]) * s2 + half_value(raw[r2, o + 2], raw[r2, o + 3]) * t
                a3 += half_value(raw[r3, o], raw[r3, o + 1]) * s3 + half_value(raw[r3, o + 2], raw[r3, o + 3]) * t
                a4 += half_value(raw[r4, o], raw[r4, o + 1]) * s4 + half_value(raw[r4, o + 2], raw[r4, o + 3]) * t
                a5 += half_value(raw[r5, o], raw[r5, o + 1]) * s5 + half_value(raw[r5, o + 2], raw[r5, o + 3]) * t
                a6 += half_value(raw[r6, o], raw[r6, o + 1]) * s6 + half_value(raw[r6, o + 2], raw[r6, o + 3]) * t
                a7 += half_value(raw[r7, o], raw[r7, o + 1]) * s7 + half_value(raw[r7, o + 2], raw[r7, o + 3]) * t
            y[mm, r0] = a0                      # rows past hi repeat the last one: not stored
            if n + 1 < hi:
                y[mm, r1] = a1
            if n + 2 < hi:
                y[mm, r2] = a2
            if n + 3 < hi:
                y[mm, r3] = a3
            if n + 4 < hi:
                y[mm, r4] = a4
            if n + 5 < hi:
                y[mm, r5] = a5
            if n + 6 < hi:
                y[mm, r6] = a6
            if n + 7 < hi:
                y[mm, r7] = a7


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
