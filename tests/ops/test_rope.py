"""RoPE beyond the op table: what makes it a position encoding (lengths kept, q·k a function of
the distance only), its pairing, the tables the fast op keeps, bad arguments."""

import numpy as np
import pytest

from numformer.ops import op_set
from numformer.ops import rope as reference_rope


@pytest.fixture(params=["reference", "fast"])
def rope(request):
    return op_set(request.param).rope


def test_a_rotation_keeps_every_vectors_length(rope):
    x = np.random.default_rng(0).standard_normal((3, 9, 8))
    y, _ = rope.forward(x, start=5)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)


def test_the_score_of_query_and_key_depends_on_their_distance_only(rope):
    """The same q at position m and k at position n: q·k after rotation is the same for every
    (m, n) with n − m = 3, and differs for another distance."""
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal(8), rng.standard_normal(8)

    def score(m, n):
        qm, _ = rope.forward(q[None, :], start=m)
        kn, _ = rope.forward(k[None, :], start=n)
        return float(qm[0] @ kn[0])

    same = [score(m, m + 3) for m in (0, 1, 17, 250)]
    np.testing.assert_allclose(same, same[0], rtol=1e-12)
    assert abs(score(0, 4) - same[0]) > 1e-3


def test_pairs_are_the_two_halves_each_turned_by_its_own_angle():
    """Written out by hand for hs = 4, θ = 100, position 2: pair 0 is (x_0, x_2), turned by 2
    radians; pair 1 is (x_1, x_3), turned by 2/10 (ω_1 = 100^(−1/2))."""
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    y, _ = reference_rope.forward(x, theta=100.0, start=2)
    a0, a1 = 2.0, 0.2
    want = [1 * np.cos(a0) - 3 * np.sin(a0), 2 * np.cos(a1) - 4 * np.sin(a1),
            3 * np.cos(a0) + 1 * np.sin(a0), 4 * np.cos(a1) + 2 * np.sin(a1)]
    np.testing.assert_allclose(y[0], want, rtol=1e-15)


def test_fast_tables_grow_and_give_the_references_bits():
    fast = op_set("fast").rope
    x = np.random.default_rng(2).standard_normal((2, 3, 6)).astype(np.float32)
    for start in (0, 300, 1000, 7):             # past the kept tables, then back inside them
        got, _ = fast.forward(x, start=start)
        want, _ = reference_rope.forward(x, start=start)
        np.testing.assert_array_equal(got, want)


def test_fast_rotation_of_strided_heads_gives_the_references_bits():
    """A decoding step rotates q and k as views of one projection's output, split into heads
    (non-contiguous): the compiled rotation (numba) and NumPy's give the reference's bits."""
    from numformer.ops.fast import dispatch
    fast = op_set("fast").rope
    qkv = np.random.default_rng(3).standard_normal((2, 5, 7 * 8 + 2 * 8)).astype(np.float32)
    for x in (qkv[..., :56].reshape(2, 5, 7, 8).transpose(0, 2, 1, 3), qkv[0, :, 56:64], qkv[:, 1:2, 64:]):
        want, _ = reference_rope.forward(np.ascontiguousarray(x), start=37)
        for numba in (True, False):
            with dispatch.overridden(numba=numba):
                got, _ = fast.forward(x, start=37)
            np.testing.assert_array_equal(got, want)


def test_bad_arguments(rope):
    with pytest.raises(ValueError, match="even head size"):
        rope.forward(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="start"):
        rope.forward(np.zeros((2, 4)), start=-1)
    with pytest.raises(ValueError, match="theta"):
        rope.forward(np.zeros((2, 4)), theta=0.0)
    _, cache = rope.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(\.\.\., 2, 4\)"):
        rope.backward(np.zeros((3, 4)), cache)
