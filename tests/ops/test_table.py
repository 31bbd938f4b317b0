"""The op table (numformer.ops.table) through the one harness (numformer.ops.harness): every row
on both op sets against torch, finite differences and float32, and every fast op against its
reference across block and chunk boundaries, with the compiled kernels and MKL on and off."""

import numpy as np
import pytest
import torch

import numformer.ops as ops
from numformer.ops import harness, layernorm
from numformer.ops.fast import attention as fast_attention
from numformer.ops.fast import dispatch
from numformer.ops.table import CASES, FAST_SIZES, fast_rows

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


def test_every_op_has_a_row_and_every_fast_op_its_sizes():
    covered = {c.op for c in CASES}
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
