"""Adam (the seed's formula 13, with bias correction) and AdamW (decoupled weight decay).

With g_t the gradient at step t = 1, 2, ... and m_0 = v_0 = 0:

    m_t = β1 m_{t-1} + (1 − β1) g_t                  first moment (momentum)
    v_t = β2 v_{t-1} + (1 − β2) g_t²                 second moment (element-wise square)
    m̂_t = m_t / (1 − β1^t),  v̂_t = v_t / (1 − β2^t)   bias correction: m_t, v_t start at 0
    θ_t = θ_{t-1} − η m̂_t / (√v̂_t + ε)

ε is added after the square root, as the seed and PyTorch write it. The last line is computed as

    θ_t = θ_{t-1} − (η / (1 − β1^t)) · m_t / (√v_t / √(1 − β2^t) + ε)

which is the same expression, arranged as torch.optim.Adam arranges it, so that the two agree to
rounding.

Weight decay λ, applied only where `decay_mask` is true (all elements when it is None):

- Adam (coupled, L2 regularisation, as torch.optim.Adam):  g_t = ∇θ L + λ θ_{t-1}
  before the moments, so the decay is rescaled by 1/√v̂ like the gradient is.
- AdamW (decoupled, as torch.optim.AdamW):  θ_{t-1} ← θ_{t-1} (1 − η λ) first, then the Adam
  update above with g_t = ∇θ L. The decay no longer depends on the gradient's scale.

State: m and v are flat (N,) arrays in the layout of the parameters (see optim/base.py), and the
step count t is an int; `state_dict()` returns all three, so training resumes bit-exactly.
"""

import math

import numpy as np

from numformer.optim.base import Optimizer, apply_masked


class Adam(Optimizer):
    """Adam with bias correction; weight_decay > 0 adds λθ to the gradient (coupled L2)."""

    _STATE_BUFFERS = ("m", "v")
    _decoupled = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay_mask=None,
    ):
        super().__init__(params, lr)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.betas = (beta1, beta2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self._set_decay_mask(decay_mask)
        self.m = self._zeros()  # (N,) first moment
        self.v = self._zeros()  # (N,) second moment
        self._scratch = self._zeros()  # (N,)
        # coupled decay needs g + λθ without touching the caller's gradient
        self._grad = self._zeros() if self.weight_decay and not self._decoupled else None

    def step(self, grads, lr: float | None = None) -> None:
        """One update with gradient `grads` (same structure as params); `lr` overrides η."""
        eta, lam = self._lr(lr), self.weight_decay
        beta1, beta2 = self.betas
        views = self._grad_views(grads)
        self.step_count += 1
        t = self.step_count
        bias1 = 1.0 - beta1**t  # 1 − β1^t
        bias2_sqrt = math.sqrt(1.0 - beta2**t)  # √(1 − β2^t)
        for seg, g in zip(self.segments, views):
            sl = slice(seg.start, seg.stop)
            p, m, v, s = seg.param, self.m[sl], self.v[sl], self._scratch[sl]

            if lam and self._decoupled:  # AdamW: θ ← θ (1 − η λ)

                def decay(r, where, p=p):
                    np.multiply(p[r], 1.0 - eta * lam, out=p[r], where=where)

                apply_masked(seg.decay, decay)
            elif lam:  # Adam: g ← ∇θ L + λ θ

                def l2(r, where, p=p, s=s, ge=self._grad[sl]):
                    np.multiply(p[r], lam, out=s[r], where=where)
                    np.add(ge[r], s[r], out=ge[r], where=where)

                np.copyto(self._grad[sl], g)
                apply_masked(seg.decay, l2)
                g = self._grad[sl]

            m *= beta1  # m_t = β1 m_{t-1} + (1 − β1) g_t
            np.multiply(g, 1.0 - beta1, out=s)
            m += s
            v *= beta2  # v_t = β2 v_{t-1} + (1 − β2) g_t²
            np.multiply(g, g, out=s)
            s *= 1.0 - beta2
            v += s
            np.sqrt(v, out=s)  # s = √v_t / √(1 − β2^t) + ε  =  √v̂_t + ε
            s /= bias2_sqrt
            s += self.eps
            np.divide(m, s, out=s)  # s = m_t / (√v̂_t + ε)
            s *= eta / bias1  # s = η m̂_t / (√v̂_t + ε)
            p -= s  # θ_t = θ_{t-1} − η m̂_t / (√v̂_t + ε)


class AdamW(Adam):
    """Adam with decoupled weight decay, exactly as torch.optim.AdamW: θ ← θ(1 − ηλ), then Adam."""

    _decoupled = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        decay_mask=None,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, decay_mask)
