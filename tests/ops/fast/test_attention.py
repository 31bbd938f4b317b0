"""What the fast ops do beyond the reference: blocks and causal chunks that really split the
work, and keep_probs=False, which keeps less and gives the same bits as keeping P. (That the
fast ops equal the reference at every block and chunk size is in test_ops.py.)"""

import dataclasses

import numpy as np
import pytest

from numformer.ops import harness
from numformer.ops.fast import attention, mha
from numformer.ops.table import CASES


def test_query_chunks_cover_every_row_once_and_skip_the_masked_keys():
    chunks = attention.query_chunks
    assert chunks(6, 6, True, qrows=2) == [(0, 2, 2), (2, 4, 4), (4, 6, 6)]
    assert chunks(6, 4, True, qrows=2) == [(0, 2, 0), (2, 4, 2), (4, 6, 4)]   # first rows see no key
    assert chunks(4, 9, True, qrows=2) == [(0, 2, 7), (2, 4, 9)]
    assert chunks(6, 6, False, qrows=2) == [(0, 6, 6)]
    assert chunks(3, 3, True, qrows=2) == [(0, 3, 3)]                          # shorter than two chunks
    assert chunks(5, 9, True, qrows=2)[:2] == [(0, 2, 6), (2, 4, 8)]
    assert chunks(256, 256, True) == [(a, a + 64, a + 64) for a in range(0, 256, 64)]   # the default
    assert chunks(1024, 1024, True) == [(a, a + 128, a + 128) for a in range(0, 1024, 128)]  # an eighth


def test_score_blocks_split_along_items_and_along_heads():
    blocks = attention.score_blocks((2, 3, 4, 5), 6, block=7)     # 3 heads x 4 x 6 = 72 > 7 per item
    assert len(blocks) > 2 and any(isinstance(b[0], int) for b in blocks)
    assert len(attention.score_blocks((2, 3, 4, 5), 6)) == 1                # the default: one block


def _arrays(tree):
    """Every ndarray in a nest of tuples and lists (an op's cache) that the cache holds alone (not
    the read-only causal bias that every call of the same shape shares)."""
    if isinstance(tree, np.ndarray):
        return [tree] if tree.flags.writeable else []
    if isinstance(tree, (tuple, list)):
        return [a for t in tree for a in _arrays(t)]
    return []


ATTENTION_CASES = [c for c in CASES if c.op in ("attention", "mha") and c.torch]


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
@pytest.mark.parametrize("sizes", [{}, {"qrows": 2, "block": 7}, {"qrows": 1}], ids=str)
def test_without_kept_probs_same_bits_as_keeping_them_and_less_kept(case, sizes):
    """keep_probs=False (what the GPT uses) keeps two numbers per query row instead of P and
    recomputes P in backward by repeating forward's operations on the same scores: the same bits
    as the path that keeps P."""
    op = attention if case.op == "attention" else mha
    for dtype in (np.float64, np.float32):
        inputs, rng = harness.make_inputs(case, dtype)
        y1, c1 = harness.run_forward(case, op, inputs, **sizes)
        y2, c2 = harness.run_forward(case, op, inputs, keep_probs=False, **sizes)
        dout = harness.random_dout(y1, rng)
        g1, g2 = harness.run_backward(case, op, dout, c1), harness.run_backward(case, op, dout, c2)
        np.testing.assert_array_equal(y1, y2)
        for name in case.grads:
            if g1[name] is None:
                assert g2[name] is None
            else:
                np.testing.assert_array_equal(g1[name], g2[name], err_msg=f"d{name}")
        Tq, Tk = (inputs["q"].shape[-2], inputs["k"].shape[-2]) if "q" in inputs else (inputs["x"].shape[-2],) * 2
        # two numbers per query row instead of its probabilities: fewer once rows see more than
        # two keys on average (causal chunks of one row keep 1, 2, ..., Tk of them)
        if 3 < Tk and Tq <= Tk:
            assert sum(a.nbytes for a in _arrays(c2)) < sum(a.nbytes for a in _arrays(c1))


def test_a_recompute_that_differs_is_caught():
    """Guards the test above: backward from a cache whose row statistics are off by one ulp
    gives different bits."""
    case = dataclasses.replace(next(c for c in ATTENTION_CASES if c.id == "attention causal"))
    inputs, rng = harness.make_inputs(case)
    y, cache = harness.run_forward(case, attention, inputs, keep_probs=False)
    dout = harness.random_dout(y, rng)
    good = harness.run_backward(case, attention, dout, cache)
    inv_sum = cache.row_stats[1]
    inv_sum[...] = np.nextafter(inv_sum, np.inf)
    bad = harness.run_backward(case, attention, dout, cache)
    assert not np.array_equal(good["q"], bad["q"])
