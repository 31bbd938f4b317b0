import math

import numpy as np
import pytest

from numformer.ops import positional


@pytest.mark.parametrize("T,C", [(7, 8), (5, 7), (1, 1), (3, 2), (50, 33)])
def test_sinusoidal_matches_the_formula(T, C):
    pe = positional.sinusoidal(T, C)
    assert pe.shape == (T, C) and pe.dtype == np.float64
    for pos in range(T):
        for j in range(C):
            i = j // 2
            angle = pos / 10000 ** (2 * i / C)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert pe[pos, j] == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_seed_example_and_dtype():
    pe = positional.sinusoidal(2, 4, dtype=np.float32)
    assert pe.dtype == np.float32
    np.testing.assert_allclose(pe[1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)], rtol=1e-7)
    assert positional.sinusoidal(0, 4).shape == (0, 4)


def test_bad_sizes():
    with pytest.raises(ValueError):
        positional.sinusoidal(3, 0)
    with pytest.raises(ValueError):
        positional.sinusoidal(-1, 4)
