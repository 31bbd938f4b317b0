"""Quantized weights for inference: int8 in blocks of 32 with one scale each, and bfloat16.

Decoding one token reads every weight once, so its speed is set by the bytes the weights take.
A float32 weight takes 4 bytes; these formats store it in 1.125 (int8) or 2 (bf16), and the
products that use them (numformer.ops.fast.quantized) read them as they are, with float32
activations and float32 sums. The weights are all that changes: quantization is applied once, to
a trained model, and has no backward.

int8 (the layout of llama.cpp's Q8_0). A weight W (..., C_in) is cut along its last dimension into
blocks of 32 consecutive values; block b of a row holds W[..., 32b .. 32b+31]. When C_in is not
a multiple of 32 the row's last block is shorter: it holds the last C_in mod 32 values, as if
the row were padded with zeros to a multiple of 32 (zeros change neither a block's largest
magnitude nor a product), and the padding is not stored. Per block:

    d = max_j |W_j| / 127          one float32 scale (a float32 division, rounded once); 0 for a
                                   block of zeros
    q_j = round(W_j / d)           an int8 in [−127, 127], rounded to the nearest integer, halves
                                   away from zero (as llama.cpp's roundf); W_j / d in float64
    deq(q)_j = d · q_j             the float32 product

Worst case. Rounding to the nearest integer is off by at most one half, so |W_j − d·q_j| ≤ d/2
for the exact product; rounding d·q_j to float32 adds at most 2^-24 · |d·q_j| ≤ 127 · 2^-24 · d
< 2^-17 · d. Hence, for every weight,

    |W_j − deq(q)_j| ≤ (d/2)·(1 + 2^-16),   d = max|W in its block| / 127,

at most 1/254 (0.39 %) of its block's largest magnitude, however small the weight itself is.
(For a block whose largest magnitude is below 127 · 2^-126 ≈ 1.5e-36, d is a subnormal float
with fewer significant bits and the bound does not hold; q is then clamped to ±127. Weights
that small round to zero in any product with activations of ordinary size.) The largest
magnitude of each block is kept to float32 rounding: its q is ±127. Storage: one byte per weight
and 4 per block of 32, 1.125 bytes a weight. llama.cpp stores d in float16 (1.0625 bytes);
numformer keeps float32 so that the bound above holds, and a Q8_0 block's float16 d is exactly a
float32 one, so a Q8_0 tensor read from a file keeps its values. int8 needs finite weights.

bf16 (bfloat16). The top 16 bits of the float32: sign, the 8 exponent bits, 7 of the 23 mantissa
bits, rounded to the nearest such value, ties to even:

    u = W's float32 bits (uint32)
    bits = (u + 0x7FFF + ((u >> 16) & 1)) >> 16      rounded to nearest even (uint16)
    deq(bits) = the float32 whose bits are bits << 16  (exact)

NaN stays NaN: its top 16 bits with the quiet bit set, (u >> 16) | 0x0040 (PyTorch gives 0xFFFF
for every NaN). ±inf stays ±inf, and a finite value at or beyond the midpoint between bf16's
largest (about 3.39e38) and 2^128 rounds to ±inf, as round-to-nearest does. Worst case, with 8 significant bits: rounding to the nearest is off by at
most half a step, and a step is 2^-7 of the power of two at or below |W|, so |W − deq| ≤ 2^-8·|W|
for |W| ≥ 2^-126 (normal numbers; approached just above a power of two), and ≤ 2^-134 below
(half of bf16's subnormal spacing). Storage: 2 bytes.

A quantized weight is an `Int8Blocks` (q, d) or a `BF16` (bits). Each has the shape, ndim and
dtype (float32: what it dequantizes to) of the weight it stands for, so numformer.ops.linear and
numformer.ops.embedding take one where they take a float32 weight: y = x deq(W)ᵀ + b and
y = deq(table)[ids] (`rows` dequantizes only the rows looked up).

GGUF's block formats (llama.cpp's), read from GGUF files (numformer.interop.gguf).

A weight row of n values is cut into blocks of 32 (the K-quants: super-blocks of 256). Each block
stores a few float16 numbers that fix a scale, and one small integer q per value; the value is a
formula of the two. GGUF files store a row as its blocks one after the other, as raw bytes, and
so does numformer: `raw` below is a uint8 array (..., n/values·bytes) of whole blocks, exactly
as the file holds it.

Formats with 32 values a block (byte j of the 16 bytes of nibbles holds value j in its low four
bits and value j+16 in its high four; every number is little-endian):

    Q8_0   34 bytes: d (float16), q_0..q_31 (int8)                x̂_i = d · q_i
    Q4_0   18 bytes: d, 16 bytes of nibbles (q_i in 0..15)        x̂_i = d · (q_i − 8)
    Q4_1   20 bytes: d, m (float16), 16 bytes of nibbles          x̂_i = d · q_i + m
    Q5_0   22 bytes: d, 4 bytes qh (bit i: q_i's fifth bit), nibbles      x̂_i = d · (q_i − 16)
    Q5_1   24 bytes: d, m, qh, nibbles (q_i in 0..31)             x̂_i = d · q_i + m

K-quants, 256 values a super-block of 16 or 8 sub-blocks, each with its own 4- to 8-bit scale
(and minimum) that the super-block's float16 d (and dmin) scale in turn:

    Q2_K   84 bytes: 16 × (4-bit scale s, 4-bit min n), 2-bit q, d, dmin   x̂ = d·s · q − dmin·n
    Q3_K  110 bytes: 3-bit q (2 low bits + 1 high bit from hmask), 16 6-bit scales s, d
                                                                          x̂ = d·(s − 32) · q,  q in −4..3
    Q4_K  144 bytes: d, dmin, 8 × (6-bit scale s, 6-bit min n), 4-bit q    x̂ = d·s · q − dmin·n
    Q5_K  176 bytes: as Q4_K with a fifth bit from qh                     x̂ = d·s · q − dmin·n
    Q6_K  210 bytes: 4 low + 2 high bits of q, 16 int8 scales s, d         x̂ = d·s · (q − 32)

Every product and sum is one float32 operation in the order written (d·s first, then ·q, then
− dmin·n), so the values are bit for bit those of the `gguf` package's dequantization
(tests/ops/test_quant_blocks.py holds them to it).

The error of quantizing. Dequantizing is exact; the error was made when the file was written.
For the three formats that `block_quantize` also writes (llama.cpp's reference quantizers),
per block of 32 values x with largest magnitude M = max|x_i|:

    Q8_0   d = M/127, q_i = round(x_i/d)                       |x_i − x̂_i| ≤ d/2 = M/254
    Q4_0   d = x_M/−8 (x_M the value of largest magnitude), q_i = min(15, ⌊x_i/d + 8.5⌋)
                                                               |x_i − x̂_i| ≤ |d| = M/8
           (d/2 everywhere but near −x_M, which needs q = 16 and gets 15)
    Q4_1   d = (max x − min x)/15, m = min x, q_i = ⌊(x_i − m)/d + 0.5⌋
                                                               |x_i − x̂_i| ≤ d/2

plus the rounding of d (and m) to float16, a relative 2⁻¹¹: it adds at most |q_i|·|d − d̂|
(+ |m − m̂|), i.e. about 2⁻¹¹·M. Q4_1 spends its 16 levels on the block's own range, Q4_0 on a
range symmetric about zero, so Q4_1 is the better of the two on weights that are not centred.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

FORMATS = ("bf16", "int8")
BLOCK = 32                     # int8: values per scale
_Q_MAX = 127
_CHUNK = 1 << 20               # elements quantized at a time (float64 temporaries stay small)


class Int8Blocks(NamedTuple):
    """An int8-quantized weight: q (..., C_in) int8 and d (..., ceil(C_in / 32)) float32."""

    q: np.ndarray
    d: np.ndarray

    format = "int8"
    shape = property(lambda self: self.q.shape)
    ndim = property(lambda self: self.q.ndim)
    dtype = property(lambda self: np.dtype(np.float32))           # what it dequantizes to
    nbytes = property(lambda self: self.q.nbytes + self.d.nbytes)


class BF16(NamedTuple):
    """A bfloat16 weight: its 16-bit patterns, uint16, of the weight's shape."""

    bits: np.ndarray

    format = "bf16"
    shape = property(lambda self: self.bits.shape)
    ndim = property(lambda self: self.bits.ndim)
    dtype = property(lambda self: np.dtype(np.float32))
    nbytes = property(lambda self: self.bits.nbytes)


class Q41Blocks(NamedTuple):
    """A weight kept in GGUF's Q4_1 blocks (`--quantize keep`), its rows as a GGUF file stores them:
    raw (N, K/32 · 20) uint8, per block of 32 values d and m (float16) and 32 values q of 4 bits,
    deq = d·q + m (see "GGUF's block formats" below). d and m must be finite."""

    raw: np.ndarray

    format = "q4_1"
    shape = property(lambda self: (self.raw.shape[0], self.raw.shape[1] // 20 * 32))
    ndim = property(lambda self: 2)
    dtype = property(lambda self: np.dtype(np.float32))
    nbytes = property(lambda self: self.raw.nbytes)


QUANTIZED = (Int8Blocks, BF16, Q41Blocks)


def stack_rows(weights):
    """Weights of one format with the same input width, their rows one after another in one new
    weight: (the stacked weight, a view of each weight's rows in it). y = x deq(W)ᵀ of the stacked
    W is the products side by side, each row as its own weight gives it; a model that keeps the
    views and the stacked weight in place of the weights holds the values once. None where the
    formats or widths differ."""
    kind = type(weights[0])
    if not all(type(w) is kind for w in weights) or len({w.shape[1] for w in weights}) != 1:
        return None
    parts = [tuple(w) for w in weights]                     # each NamedTuple's arrays, (N_i, ·)
    stacked = kind(*(np.concatenate(arrays) for arrays in zip(*parts)))
    views, lo = [], 0
    for w in weights:
        hi = lo + w.shape[0]
        views.append(kind(*(a[lo:hi] for a in stacked)))
        lo = hi
    return stacked, views


def is_quantized(w) -> bool:
    return isinstance(w, QUANTIZED)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"quantization format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def quantize(w, fmt: str):
    """W (float32, or float64 rounded to float32 first; any shape with a last dimension) as `fmt`:
    Int8Blocks or BF16."""
    check_format(fmt)
    w = np.asarray(w)
    if w.ndim < 1 or not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"quantize: need a float array with at least one dimension, got {w.dtype} {w.shape}")
    return quantize_int8(w) if fmt == "int8" else BF16(bf16_bits(w))


def dequantize(qw) -> np.ndarray:
    """The float32 weight that a quantized one stands for (a new array)."""
    if isinstance(qw, Int8Blocks):
        return int8_values(qw.q, qw.d)
    if isinstance(qw, BF16):
        return bf16_values(qw.bits)
    if isinstance(qw, Q41Blocks):
        return block_dequantize(qw.raw, "Q4_1")
    raise TypeError(f"dequantize: not a quantized weight: {type(qw).__name__}")


def rows(qw, ids) -> np.ndarray:
    """deq(qw)[ids]: the rows an embedding looks up, dequantized alone. ids (...) -> (..., C)."""
    if isinstance(qw, Int8Blocks):
        return int8_values(qw.q[ids], qw.d[ids])
    if isinstance(qw, Q41Blocks):
        return block_dequantize(qw.raw[ids], "Q4_1")
    return bf16_values(qw.bits[ids])


# ----------------------------------------------------------------------------- int8

def quantize_int8(w) -> Int8Blocks:
    """Int8Blocks of W (..., C_in), rounded to float32 first: the scales d and the rounded q of the
    module docstring."""
    w = np.asarray(w)
    if not np.all(np.isfinite(w)):
        raise ValueError("int8 quantization needs finite weights; this one has inf or NaN")
    K = w.shape[-1]
    nb = -(-K // BLOCK)
    flat = w.reshape(-1, K)                                             # (R, C_in)
    q = np.empty(flat.shape, dtype=np.int8)
    d = np.empty((flat.shape[0], nb), dtype=np.float32)
    step = max(1, _CHUNK // max(K, 1))
    for lo in range(0, flat.shape[0], step):
        hi = min(lo + step, flat.shape[0])
        padded = np.zeros((hi - lo, nb * BLOCK), dtype=np.float32)     # the zeros of a short last block
        padded[:, :K] = flat[lo:hi]
        blocks = padded.reshape(hi - lo, nb, BLOCK)                    # (rows, blocks, 32)
        amax = np.abs(blocks).max(axis=-1)                             # (rows, blocks)
        scale = amax / np.float32(_Q_MAX)                              # float32 division
        d[lo:hi] = scale
        safe = np.where(scale > 0, scale, 1).astype(np.float64)[..., None]
        r = blocks.astype(np.float64) / safe                           # W / d, exact to float64
        a = np.abs(r)
        whole = np.floor(a)
        a = whole + (a - whole >= 0.5)                                 # halves away from zero
        q[lo:hi] = np.clip(np.copysign(a, r), -_Q_MAX, _Q_MAX).reshape(hi - lo, -1)[:, :K]
    return Int8Blocks(q.reshape(w.shape), d.reshape(*w.shape[:-1], nb))


def int8_values(q, d) -> np.ndarray:
    """d · q as float32: each scale times the values of its block (..., C_in)."""
    K = q.shape[-1]
    return np.repeat(d, BLOCK, axis=-1)[..., :K] * q.astype(np.float32)   # float32 products


# ----------------------------------------------------------------------------- bf16

def bf16_bits(w) -> np.ndarray:
    """The bf16 bit patterns (uint16) of W (rounded to float32 first), to nearest even; NaN quiet."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    u = w.view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16   # NaN's wrap around: replaced below
    bits = rounded.astype(np.uint16)
    nan = np.isnan(w)
    bits[nan] = (u[nan] >> 16).astype(np.uint16) | np.uint16(0x0040)
    return bits


def bf16_values(bits) -> np.ndarray:
    """The float32 values of bf16 bit patterns: the 16 bits followed by 16 zeros."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# ----------------------------------------------------------------------------- GGUF's block formats

class BlockFormat(NamedTuple):
    values: int          # values per block
    bytes: int           # bytes per block


QK_K = 256               # values per K-quant super-block

BLOCK_FORMATS = {
    "Q8_0": BlockFormat(32, 34),
    "Q4_0": BlockFormat(32, 18),
    "Q4_1": BlockFormat(32, 20),
    "Q5_0": BlockFormat(32, 22),
    "Q5_1": BlockFormat(32, 24),
    "Q2_K": BlockFormat(QK_K, 84),
    "Q3_K": BlockFormat(QK_K, 110),
    "Q4_K": BlockFormat(QK_K, 144),
    "Q5_K": BlockFormat(QK_K, 176),
    "Q6_K": BlockFormat(QK_K, 210),
}
QUANTIZERS = ("Q8_0", "Q4_0", "Q4_1")     # the formats block_quantize writes

_ROWS_AT_ONCE = 1 << 14                   # blocks dequantized per pass: bounds the temporaries


def row_bytes(fmt: str, n: int) -> int:
    """Bytes of one row of n values in format fmt; ValueError if n is not whole blocks."""
    f = BLOCK_FORMATS[fmt]
    if n % f.values:
        raise ValueError(f"a {fmt} row holds whole blocks of {f.values} values; {n} is not a multiple")
    return n // f.values * f.bytes


def block_dequantize(raw: np.ndarray, fmt: str) -> np.ndarray:
    """The float32 values of raw (..., k·bytes) uint8, k whole blocks of format fmt per row:
    (..., k·values). See the module docstring for each format's formula."""
    f = BLOCK_FORMATS[fmt]
    raw = np.ascontiguousarray(raw).view(np.uint8)
    if raw.shape[-1] % f.bytes:
        raise ValueError(f"{fmt} rows are whole blocks of {f.bytes} bytes; got rows of {raw.shape[-1]} bytes")
    out_shape = (*raw.shape[:-1], raw.shape[-1] // f.bytes * f.values)
    blocks = raw.reshape(-1, f.bytes)                         # (nb, bytes)
    out = np.empty((blocks.shape[0], f.values), dtype=np.float32)
    decode = _DECODERS[fmt]
    with np.errstate(invalid="ignore", over="ignore"):      # a damaged file's inf scale: the caller checks
        for s in range(0, blocks.shape[0], _ROWS_AT_ONCE):
            out[s:s + _ROWS_AT_ONCE] = decode(blocks[s:s + _ROWS_AT_ONCE])
    return out.reshape(out_shape)


# ----------------------------------------------------------------------------- the formulas
# Each takes (nb, bytes) uint8 blocks and gives (nb, values) float32.

def _f16(b):
    """float16 fields (nb, 2k) bytes -> (nb, k) float32."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs):
    """16 bytes per block -> 32 values in 0..15: low nibbles are values 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)     # (nb, 32) uint8


def _fifth_bits(qh):
    """4 bytes qh per block (a little-endian uint32) -> bit i of it for i = 0..31, as 0 or 16."""
    bits = np.unpackbits(qh, axis=-1, bitorder="little")      # (nb, 32): bit i of the uint32
    return bits << 4


def _q8_0(b):
    d, q = _f16(b[:, :2]), b[:, 2:].view(np.int8)
    return q.astype(np.float32) * d                            # x̂ = d · q


def _q4_0(b):
    d, q = _f16(b[:, :2]), _nibbles(b[:, 2:])
    return d * (q.astype(np.int8) - np.int8(8)).astype(np.float32)   # x̂ = d · (q − 8)


def _q4_1(b):
    d, m, q = _f16(b[:, :2]), _f16(b[:, 2:4]), _nibbles(b[:, 4:])
    return d * q.astype(np.float32) + m                        # x̂ = d · q + m


def _q5_0(b):
    d, q = _f16(b[:, :2]), _nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6])
    return d * (q.astype(np.int8) - np.int8(16)).astype(np.float32)  # x̂ = d · (q − 16)


def _q5_1(b):
    d, m, q = _f16(b[:, :2]), _f16(b[:, 2:4]), _nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8])
    return d * q.astype(np.float32) + m                        # x̂ = d · q + m


def _crumbs(q, groups):
    """2-bit fields: q (nb, groups·32) bytes -> (nb, groups·128): for each 32 bytes, their bits
    0-1 are values 0..31, bits 2-3 values 32..63, 4-5 values 64..95, 6-7 values 96..127."""
    nb = q.shape[0]
    q = q.reshape(nb, groups, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return (q & 3).reshape(nb, groups * 128)


def _q2_k(b):
    nb = b.shape[0]
    scales, q = b[:, :16], _crumbs(b[:, 16:80], 2)             # (nb, 16), (nb, 256)
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).astype(np.float32)).reshape(nb, 16, 1)     # d·s per 16 values
    ml = (dmin * (scales >> 4).astype(np.float32)).reshape(nb, 16, 1)    # dmin·n
    return (dl * q.reshape(nb, 16, 16).astype(np.float32) - ml).reshape(nb, QK_K)


def _q3_k(b):
    nb = b.shape[0]
    hmask, q, packed, d = b[:, :32], _crumbs(b[:, 32:96], 2), b[:, 96:108], _f16(b[:, 108:110])
    # sixteen 6-bit scales: the low 4 bits from bytes 0-7 (low nibbles first, then high), the
    # high 2 bits from bytes 8-11 (bits 0-1 of each for scales 0-3, bits 2-3 for 4-7, ...)
    low = np.concatenate([packed[:, :8] & 0x0F, packed[:, :8] >> 4], axis=-1)
    high = (packed[:, 8:12].reshape(nb, 1, 4) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)) & 3
    s = (low | (high.reshape(nb, 16) << 4)).astype(np.int8) - np.int8(32)
    dl = (d * s.astype(np.float32)).reshape(nb, 16, 1)
    # the third bit: bit j of hmask byte i belongs to value 32·j + i; a clear bit subtracts 4
    h = (hmask.reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    qv = q.astype(np.int8) - ((h.reshape(nb, QK_K) ^ 1) << 2).astype(np.int8)   # q in −4..3
    return (dl * qv.reshape(nb, 16, 16).astype(np.float32)).reshape(nb, QK_K)


def _k_scale_min(packed):
    """Q4_K/Q5_K's 12 bytes -> eight 6-bit scales and eight 6-bit mins. Bytes 0-3 hold scales
    0-3 (low 6 bits) and the top bits of scales 4-7; bytes 4-7 the same for the mins; bytes 8-11
    the low nibbles of scales 4-7 (low) and mins 4-7 (high)."""
    d, m, md = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn                                              # (nb, 8) each


def _q4_k(b):
    nb = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    # 4-bit q: each 32 bytes hold 64 values, the low nibbles first
    q = b[:, 16:].reshape(nb, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (q & 0x0F).reshape(nb, 8, 32).astype(np.float32)
    ds = (d * sc.astype(np.float32)).reshape(nb, 8, 1)          # d·s
    dm = (dmin * mn.astype(np.float32)).reshape(nb, 8, 1)       # dmin·n
    return (ds * q - dm).reshape(nb, QK_K)


def _q5_k(b):
    nb = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    qh, qs = b[:, 16:48], b[:, 48:]
    low = qs.reshape(nb, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    high = qh.reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)   # bit j: sub-block j
    q = ((low & 0x0F).reshape(nb, 8, 32) | ((high & 1) << 4)).astype(np.float32)
    ds = (d * sc.astype(np.float32)).reshape(nb, 8, 1)
    dm = (dmin * mn.astype(np.float32)).reshape(nb, 8, 1)
    return (ds * q - dm).reshape(nb, QK_K)


def _q6_k(b):
    nb = b.shape[0]
    ql, qh, scales, d = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8), _f16(b[:, 208:210])
    ds = (d * scales.astype(np.float32)).reshape(nb, 16, 1)     # d·s per 16 values
    # per half of 128 values: 64 bytes of low nibbles (values 0-63 low, 64-127 high) and 32
    # bytes holding two high bits for each of 4 × 32 values
    low = (ql.reshape(nb, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    high = (qh.reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (low.reshape(nb, 8, 32) | (high.reshape(nb, 8, 32) << 4)).astype(np.int8) - np.int8(32)
    return (ds * q.reshape(nb, 16, 16).astype(np.float32)).reshape(nb, QK_K)


_DECODERS = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
             "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


# ----------------------------------------------------------------------------- quantizing

def block_quantize(x: np.ndarray, fmt: str) -> np.ndarray:
    """x (..., n) float32, n a multiple of 32, as llama.cpp's reference quantizer writes it in
    fmt (Q8_0, Q4_0 or Q4_1): (..., n/32·bytes) uint8. The formulas and their error are in the
    module docstring."""
    if fmt not in QUANTIZERS:
        raise ValueError(f"block_quantize writes {', '.join(QUANTIZERS)}, not {fmt!r}")
    f = BLOCK_FORMATS[fmt]
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] % f.values:
        raise ValueError(f"{fmt} rows are whole blocks of {f.values} values; got rows of {x.shape[-1]}")
    blocks = x.reshape(-1, f.values)                            # (nb, 32)
    out = _ENCODERS[fmt](blocks)
    return out.reshape(*x.shape[:-1], x.shape[-1] // f.values * f.bytes)


def q8_0_as_int8(raw: np.ndarray) -> Int8Blocks:
    """GGUF's Q8_0 rows (N, K/32 · 34) as the int8 blocks of this module: the same int8 values, and
    each float16 d as the float32 of the same value (exact), so deq = d·q is unchanged."""
    nb = raw.shape[-1] // 34
    blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], nb, 34)
    d = _f16(blocks[:, :, :2].reshape(raw.shape[0], 2 * nb))                     # (N, nb)
    q = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(raw.shape[0], nb * 32)
    return Int8Blocks(q, d)


def _inverse(d):
    """1/d, and 0 where d = 0 (a block of zeros keeps q = 0)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _pack_nibbles(q):
    """(nb, 32) values in 0..15 -> 16 bytes: value j low, value j+16 high."""
    return q[:, :16] | (q[:, 16:] << 4)


def _half_bytes(v):
    return v.astype(np.float16).view(np.uint8).reshape(v.shape[0], 2)


def _encode_q8_0(x):
    d = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)              # d = M/127
    v = x * _inverse(d)
    whole = np.floor(np.abs(v))
    q = np.sign(v) * (whole + np.floor(2 * (np.abs(v) - whole)))   # round half away from 0, exactly
    return np.concatenate([_half_bytes(d), q.astype(np.int8).view(np.uint8)], axis=1)


def _encode_q4_0(x):
    at = np.abs(x).argmax(axis=1)[:, None]
    d = np.take_along_axis(x, at, axis=1) / np.float32(-8)                  # d = x_M / −8
    q = np.trunc(x * _inverse(d) + np.float32(8.5)).astype(np.uint8).clip(0, 15)
    return np.concatenate([_half_bytes(d), _pack_nibbles(q)], axis=1)


def _encode_q4_1(x):
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(15)                                          # d = (max − min)/15, m = min
    q = np.trunc((x - lo) * _inverse(d) + np.float32(0.5)).astype(np.uint8).clip(0, 15)
    return np.concatenate([_half_bytes(d), _half_bytes(lo), _pack_nibbles(q)], axis=1)


_ENCODERS = {"Q8_0": _encode_q8_0, "Q4_0": _encode_q4_0, "Q4_1": _encode_q4_1}
