"""GGUF's block formats (numformer.ops.quant) against the `gguf` package's own quantization code,
bit for bit: its dequantization of every format numformer reads, and its quantizers of the three
numformer writes. The blocks are both what gguf's quantizers make of real-looking weights and
random bytes (every bit pattern of the integer fields, float16 scales of every size)."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGML_QUANT_SIZES
from gguf import quants as gq

from numformer.ops import quant


def random_blocks(fmt, n_blocks, rng):
    """Random bytes in n_blocks blocks of fmt, with every float16 field a finite number, positive
    or negative, from tiny to large."""
    values, size = quant.BLOCK_FORMATS[fmt]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for start in _f16_fields(fmt):
        h = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-4, 3, n_blocks)).astype(np.float16)
        raw[:, start:start + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return raw


def _f16_fields(fmt):
    """Byte offsets of the float16 fields of a block (d, m / dmin)."""
    return {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q2_K": [80, 82],
            "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}[fmt]


@pytest.mark.parametrize("fmt", sorted(quant.BLOCK_FORMATS))
def test_sizes_are_ggufs(fmt):
    assert tuple(quant.BLOCK_FORMATS[fmt]) == GGML_QUANT_SIZES[GGMLQuantizationType[fmt]]


@pytest.mark.parametrize("fmt", sorted(quant.BLOCK_FORMATS))
def test_dequantize_random_bytes_bit_for_bit(fmt):
    rng = np.random.default_rng(sum(map(ord, fmt)))
    values, size = quant.BLOCK_FORMATS[fmt]
    raw = random_blocks(fmt, 3 * 40, rng).reshape(3, 40 * size)         # 3 rows of 40 blocks
    ours = quant.block_dequantize(raw, fmt)
    theirs = gq.dequantize(raw, GGMLQuantizationType[fmt])
    assert ours.shape == theirs.shape == (3, 40 * values) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("fmt", quant.QUANTIZERS)
def test_quantize_and_dequantize_weights_bit_for_bit(fmt):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((48, 256)).astype(np.float32) * 0.05
    w[0, :32] = 0.0                          # a block of zeros: d = 0
    w[1, :32] = 3.0                          # a constant block
    w[2, 32:64] += 1.0                       # a block far from centred
    w[3, :32] = np.float32(0.5) * np.arange(32, dtype=np.float32) / 31 * 127 / 127   # ties of x/d + 0.5
    ours = quant.block_quantize(w, fmt)
    theirs = gq.quantize(w, GGMLQuantizationType[fmt])
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(quant.block_dequantize(ours, fmt), gq.dequantize(theirs, GGMLQuantizationType[fmt]))


# Each quantizer's bound of the module docstring, per block of 32: the rounding error, plus the
# float16 rounding of d (and m), 2^-11 relative, times the largest |q| (or 1 for m).
BOUNDS = {
    "Q8_0": lambda x: np.abs(x).max() / 254 + 127 * 2.0 ** -11 * np.abs(x).max() / 127,
    "Q4_0": lambda x: np.abs(x).max() / 8 + 8 * 2.0 ** -11 * np.abs(x).max() / 8,
    "Q4_1": lambda x: (x.max() - x.min()) / 30 + 15 * 2.0 ** -11 * (x.max() - x.min()) / 15 + 2.0 ** -11 * np.abs(x.min()),
}


@pytest.mark.parametrize("fmt", quant.QUANTIZERS)
def test_error_within_the_written_bound(fmt):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 32)).astype(np.float32) * rng.uniform(0.01, 10, size=(200, 1)).astype(np.float32)
    x[::7] += 2.0                             # blocks that are not centred
    err = np.abs(quant.block_dequantize(quant.block_quantize(x, fmt), fmt) - x)
    bound = np.array([BOUNDS[fmt](row) for row in x.astype(np.float64)])
    assert (err.max(axis=1) <= bound * (1 + 1e-6)).all()
    # and the bound is not loose by an order of magnitude: some block comes within half of it
    assert (err.max(axis=1) / bound).max() > 0.5


def test_q4_1_beats_q4_0_off_centre():
    """What the docstring claims: Q4_1 spends its 16 levels on the block's range."""
    x = (np.random.default_rng(5).uniform(0.9, 1.1, size=(64, 32))).astype(np.float32)
    err = {f: np.abs(quant.block_dequantize(quant.block_quantize(x, f), f) - x).mean() for f in ("Q4_0", "Q4_1")}
    assert err["Q4_1"] < err["Q4_0"] / 5


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="whole blocks"):
        quant.block_dequantize(np.zeros((2, 35), np.uint8), "Q8_0")
    with pytest.raises(ValueError, match="whole blocks"):
        quant.block_quantize(np.zeros((2, 40), np.float32), "Q4_1")
    assert quant.row_bytes("Q4_1", 576) == 18 * 20
    with pytest.raises(ValueError, match="multiple"):
        quant.row_bytes("Q6_K", 576)
