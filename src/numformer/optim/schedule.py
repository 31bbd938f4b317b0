"""Learning-rate schedule: linear warmup, then cosine decay to a minimum (nanoGPT's get_lr).

With η the peak rate, η_min the floor, W = warmup_iters and D = lr_decay_iters:

    η(it) = η · (it + 1) / (W + 1)                               it < W        (warmup)
    η(it) = η_min + ½ (1 + cos(π r)) (η − η_min),  r = (it − W)/(D − W)   W ≤ it ≤ D
    η(it) = η_min                                                it > D

The warmup starts above 0 (η/(W+1) at it = 0), so the first step already moves the weights. When
D <= W there is no cosine segment and the rate drops to η_min after the warmup.
"""

import math


def cosine_lr(
    it: int, learning_rate: float, warmup_iters: int, lr_decay_iters: int, min_lr: float
) -> float:
    """The learning rate for iteration `it` (0-based)."""
    if it < 0:
        raise ValueError(f"iteration must be >= 0, got {it}")
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters or lr_decay_iters <= warmup_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)  # in [0, 1]
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 → 0
    return min_lr + coeff * (learning_rate - min_lr)
