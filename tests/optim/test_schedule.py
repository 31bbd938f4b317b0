"""cosine_lr against nanoGPT's get_lr written out independently, and hand-computed boundaries."""

import math

import pytest

from numformer.optim import cosine_lr


def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) if it > lr_decay_iters, return min learning rate
    if it > lr_decay_iters:
        return min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize(
    "lr,warmup,decay,min_lr",
    [(1e-3, 100, 2000, 1e-4), (6e-4, 0, 50, 6e-5), (1.0, 10, 11, 0.0), (1e-3, 5, 40, 1e-3)],
)
def test_matches_nanogpt_definition_everywhere(lr, warmup, decay, min_lr):
    for it in range(decay + 20):
        assert cosine_lr(it, lr, warmup, decay, min_lr) == pytest.approx(
            nanogpt_get_lr(it, lr, warmup, decay, min_lr), rel=1e-15, abs=0
        )


def test_boundaries_by_hand():
    lr, min_lr, w, d = 1e-3, 1e-4, 100, 2000
    assert cosine_lr(0, lr, w, d, min_lr) == pytest.approx(lr / 101)  # never 0
    assert cosine_lr(99, lr, w, d, min_lr) == pytest.approx(lr * 100 / 101)  # last warmup step
    assert cosine_lr(100, lr, w, d, min_lr) == pytest.approx(lr)  # peak: cos(0) = 1
    assert cosine_lr(1050, lr, w, d, min_lr) == pytest.approx((lr + min_lr) / 2)  # cos(π/2) = 0
    assert cosine_lr(2000, lr, w, d, min_lr) == pytest.approx(min_lr)  # cos(π) = -1
    assert cosine_lr(2001, lr, w, d, min_lr) == min_lr
    assert cosine_lr(10**6, lr, w, d, min_lr) == min_lr
    assert cosine_lr(0, lr, 0, d, min_lr) == pytest.approx(lr)  # no warmup starts at the peak


def test_monotone_up_then_down():
    lrs = [cosine_lr(it, 1e-3, 20, 200, 1e-4) for it in range(260)]
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21]))
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


def test_no_cosine_segment_when_decay_ends_before_warmup():
    # nanoGPT divides by zero at it == warmup_iters == lr_decay_iters; we give min_lr
    assert cosine_lr(9, 1.0, 10, 10, 0.1) == pytest.approx(1.0 * 10 / 11)
    assert cosine_lr(10, 1.0, 10, 10, 0.1) == 0.1
    assert cosine_lr(10, 1.0, 10, 5, 0.1) == 0.1


def test_negative_iteration_is_an_error():
    with pytest.raises(ValueError, match="-1"):
        cosine_lr(-1, 1e-3, 10, 100, 1e-4)
