"""Plain gradient descent, the article's formula 12.

    θ ← θ − η ∇θ L

θ are the parameters (one flat buffer, or a dict of arrays), η the learning rate and ∇θ L the
gradient of the loss, with the same structure as θ. Matches torch.optim.SGD with momentum 0 and
no weight decay.
"""

import numpy as np

from numformer.optim.base import Optimizer


class SGD(Optimizer):
    """θ ← θ − η ∇θ L, in place. `step(grads, lr=None)`; `lr` overrides η for this step."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr)
        self._scratch = self._zeros()  # (N,) holds η ∇θ L

    def step(self, grads, lr: float | None = None) -> None:
        eta = self._lr(lr)
        for seg, g in zip(self.segments, self._grad_views(grads)):
            s = self._scratch[seg.start : seg.stop]
            np.multiply(g, eta, out=s)  # η ∇θ L
            seg.param -= s  # θ ← θ − η ∇θ L
        self.step_count += 1
