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


QUANTIZED = (Int8Blocks, BF16)


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
    raise TypeError(f"dequantize: not a quantized weight: {type(qw).__name__}")


def rows(qw, ids) -> np.ndarray:
    """deq(qw)[ids]: the rows an embedding looks up, dequantized alone. ids (...) -> (..., C)."""
    if isinstance(qw, Int8Blocks):
        return int8_values(qw.q[ids], qw.d[ids])
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
