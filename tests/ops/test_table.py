"""The op table (numformer.ops.table) through the one harness (numformer.ops.harness): every row
on both op sets against torch, finite differences and float32, and every fast op against its
reference across block and chunk boundaries, with the compiled kernels and MKL on and off; the
quantized weights' rows against exact arithmetic, their bounds and torch's bf16."""

import numpy as np
import pytest
import torch

import numformer.ops as ops
from numformer.ops import harness, layernorm, quant
from numformer.ops.fast import attention as fast_attention
from numformer.ops.fast import dispatch, quantized
from numformer.ops.table import CASES, FAST_SIZES, QUANT_CASES, fast_rows

SETS = ["reference", "fast"]
TORCH_CASES = [c for c in CASES if c.torch is not None]


def assert_ok(results):
    assert results and all(r.ok for r in results), harness.failures(results)


@pytest.mark.parametrize("ops_name", SETS)
@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_against_torch_float64(case, ops_name):
    assert_ok(harness.against_torch(case, ops_name, torch))


@pytest.mark.parametrize("ops_name", SETS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_finite_differences(case, ops_name):
    assert_ok(harness.against_finite_differences(case, ops_name))


@pytest.mark.parametrize("ops_name", SETS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_agrees_with_float64(case, ops_name):
    assert_ok(harness.float32_against_float64(case, ops_name))


@pytest.mark.parametrize("native", ["native", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case, sizes", fast_rows(), ids=lambda v: str(v) if not isinstance(v, dict) else
                         (",".join(f"{k}={x}" for k, x in v.items()) or "default"))
def test_fast_equals_reference(case, sizes, dtype, native, monkeypatch):
    """native: float32 runs the compiled kernels (numformer.ops.fast.kernels) and the linear
    map's products go to MKL (float64 too; dispatch.MIN_WORK lowered to 1 so that the table's
    small shapes reach it); numpy: both switched off, the fast ops' NumPy code alone. The test
    extras install numba and, on x86-64 Linux, MKL."""
    monkeypatch.setattr(dispatch, "MIN_WORK", 1)
    with dispatch.overridden(numba=native == "native", mkl=native == "native"):
        assert_ok(harness.fast_against_reference(case, sizes, dtype))


@pytest.mark.parametrize("case, sizes", [(c, s) for c, s in fast_rows() if s and c.torch], ids=str)
def test_fast_at_small_sizes_against_torch(case, sizes):
    """The fast ops' blocked and chunked paths straight against torch, not only through the
    reference."""
    assert_ok(harness.against_torch(case, "fast", torch, **sizes))


@pytest.mark.parametrize("native", ["native", "numpy"])
@pytest.mark.parametrize("case", QUANT_CASES, ids=str)
def test_quantized_weights(case, native):
    """native: the fast linear map's products by the compiled kernels (and tiles beyond their
    rows); numpy: numba switched off, dequantized tiles alone."""
    with dispatch.overridden(numba=native == "native"):
        assert_ok(harness.quant_checks(case, torch))


def test_every_op_has_a_row_and_every_fast_op_its_sizes():
    covered = {c.op for c in CASES} | {"quant"}           # quant: QUANT_CASES
    assert {c.format for c in QUANT_CASES} == set(quant.FORMATS)
    assert covered == set(ops.__all__) - {"positional"}   # positional has no backward: test_positional.py
    fast = ops.op_set("fast")
    differing = {name for name in ops.__all__ if getattr(fast, name) is not getattr(ops, name)}
    assert differing == set(FAST_SIZES)


def _off_by_one_percent(backward):
    """backward, with 1 % of the first gradient's largest magnitude added to its last element."""
    def wrong(*args):
        grads = list(backward(*args))
        grads[0] = grads[0].copy()
        grads[0].flat[-1] += 0.01 * np.abs(grads[0]).max()
        return tuple(grads)
    return wrong


def test_the_harness_catches_a_wrong_gradient(monkeypatch):
    """A backward that is off by 1 % in one element fails each kind of check."""
    case = next(c for c in CASES if c.op == "layernorm")
    monkeypatch.setattr(layernorm, "backward", _off_by_one_percent(layernorm.backward))
    assert not all(r.ok for r in harness.against_torch(case, "reference", torch))
    assert not all(r.ok for r in harness.against_finite_differences(case, "reference"))

    case = next(c for c in CASES if c.id == "attention causal")
    monkeypatch.setattr(fast_attention, "backward", _off_by_one_percent(fast_attention.backward))
    assert not all(r.ok for r in harness.fast_against_reference(case, {"qrows": 2}, np.float32))


def test_the_harness_catches_a_wrong_quantization(monkeypatch):
    """Ties rounded to even instead of away from zero, bf16 truncated instead of rounded, and a
    product off by 1e-4 of its largest value each fail."""
    ties = next(c for c in QUANT_CASES if c.id.startswith("int8 ties"))
    assert all(r.ok for r in harness.quant_checks(ties))
    with monkeypatch.context() as m:
        def to_even(w):                       # the same scales; halves to even (np.round)
            blocks = w.reshape(*w.shape[:-1], -1, 32)
            d = np.abs(blocks).max(axis=-1) / np.float32(127)
            return quant.Int8Blocks(np.round(blocks / d[..., None]).astype(np.int8).reshape(w.shape), d)
        m.setattr(quant, "quantize_int8", to_even)
        assert not all(r.ok for r in harness.quant_checks(ties))

    case = next(c for c in QUANT_CASES if c.id == "bf16 (4, 40)")
    with monkeypatch.context() as m:
        m.setattr(quant, "bf16_bits", lambda w: (np.asarray(w, np.float32).view(np.uint32) >> 16).astype(np.uint16))
        results = harness.quant_checks(case, torch)
        assert not all(r.ok for r in results if r.check == "exact")
        assert not all(r.ok for r in results if r.check == "torch")

    case = next(c for c in QUANT_CASES if c.products)
    matmul = quantized.matmul

    def off(x2, w, bias=None):
        y = matmul(x2, w, bias)
        return y + 1e-4 * np.abs(y).max()
    with monkeypatch.context() as m:
        m.setattr(quantized, "matmul", off)
        results = harness.quant_checks(case)
        assert not all(r.ok for r in results if r.ops.startswith("fast"))
        assert all(r.ok for r in results if r.ops.startswith("reference"))
