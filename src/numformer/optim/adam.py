"""Adam (the article's formula 13, with bias correction) and AdamW (decoupled weight decay).

With g_t the gradient at step t = 1, 2, ... and m_0 = v_0 = 0:

    m_t = β1 m_{t-1} + (1 − β1) g_t                  first moment (momentum)
    v_t = β2 v_{t-1} + (1 − β2) g_t²                 second moment (element-wise square)
    m̂_t = m_t / (1 − β1^t),  v̂_t = v_t / (1 − β2^t)   bias correction: m_t, v_t start at 0
    θ_t = θ_{t-1} − η m̂_t / (√v̂_t + ε)

ε is added after the square root, as the article and PyTorch write it. The last line is computed
as

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

Speed. The update is about ten element-wise passes. Made over whole (N,) arrays, each pass
streams θ, g, m and v through memory again (43 MB each for the 10.8 M-parameter "small" GPT).
`step` instead walks the parameters in chunks of `chunk` elements (default CHUNK) and makes all ten passes over one
chunk while it is in the CPU cache, and, with `threads=n` (default 1; `numformer train` passes one
per core), gives contiguous runs of chunks to n threads.
Every element goes through the same operations either way, so the result does not depend on the
chunking or the thread count. With numba's kernels (numformer.ops.fast.dispatch) the moment and parameter
update of a float32 chunk is one compiled pass that makes the same float32 operations in the
same order, so the same bits as the NumPy passes.
"""

import math

import numpy as np

from numformer.ops.fast import dispatch
from numformer.ops.fast.dispatch import NUMBA
from numformer.optim.base import Optimizer
from numformer.parallel.threads import chunks, groups, parallel

# elements per chunk: θ, g, m, v and the scratch (5 x 512 KiB in float32) stay in the L3 cache;
# the sizes tried are in docs/performance.md ("Sizes chosen by measurement").
CHUNK = 1 << 17


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
        threads: int = 1,
        chunk: int = CHUNK,
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
        self.threads = max(1, int(threads))  # threads for step(); see "Speed" above
        self.chunk = max(1, int(chunk))      # elements per chunk of step(); see "Speed" above
        self._set_decay_mask(decay_mask)
        self.m = self._zeros()  # (N,) first moment
        self.v = self._zeros()  # (N,) second moment
        self._scratch = []      # per thread: two (chunk,) buffers, made on first use

    def step(self, grads, lr: float | None = None) -> None:
        """One update with gradient `grads` (same structure as params); `lr` overrides η."""
        views = self._grad_views(grads)
        self.step_count += 1
        t = self.step_count
        beta1, beta2 = self.betas
        k = {"eta": self._lr(lr), "bias1": 1.0 - beta1**t,            # 1 − β1^t
             "bias2_sqrt": math.sqrt(1.0 - beta2**t)}                 # √(1 − β2^t)
        tasks = [(seg, g, lo, hi) for seg, g in zip(self.segments, views)
                 for lo, hi in chunks(seg.stop - seg.start, self.chunk)]
        work = groups(tasks, self.threads)
        while len(self._scratch) < len(work):
            self._scratch.append((np.empty(self.chunk, self.dtype), np.empty(self.chunk, self.dtype)))
        parallel(lambda r: [self._update(*task, *self._scratch[r], **k) for task in work[r]], range(len(work)))

    def _update(self, seg, g, lo, hi, s, ge, eta, bias1, bias2_sqrt) -> None:
        """The update of elements [lo, hi) of one segment; s and ge are scratch buffers."""
        lam, (beta1, beta2) = self.weight_decay, self.betas
        n = hi - lo
        p, g, s = seg.param[lo:hi], g[lo:hi], s[:n]
        m, v = self.m[seg.start + lo:seg.start + hi], self.v[seg.start + lo:seg.start + hi]
        if lam and self._decoupled:  # AdamW: θ ← θ (1 − η λ)
            for r, where in _decayed(seg.decay, lo, hi):
                np.multiply(p[r], 1.0 - eta * lam, out=p[r], where=where)
        elif lam:  # Adam: g ← ∇θ L + λ θ, in scratch (the caller's gradient is not touched)
            ge = ge[:n]
            np.copyto(ge, g)
            for r, where in _decayed(seg.decay, lo, hi):
                np.multiply(p[r], lam, out=s[r], where=where)
                np.add(ge[r], s[r], out=ge[r], where=where)
            g = ge

        if dispatch.runs("adam", p, g, m, v) == NUMBA:  # the lines below in one compiled pass, the same bits
            f = np.float32
            dispatch.kernels().adam_update(p, g, m, v, f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2),
                                           f(bias2_sqrt), f(self.eps), f(eta / bias1))
            return
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


def _decayed(decay, lo, hi):
    """(index, where) pairs, relative to lo, of the decayed elements among [lo, hi) of a segment
    whose decay is a list of [a, b) runs or a boolean mask (see optim/base.py)."""
    if isinstance(decay, np.ndarray):
        return [(slice(None), decay[lo:hi])]
    return [(slice(max(a, lo) - lo, min(b, hi) - lo), True) for a, b in decay if max(a, lo) < min(b, hi)]


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
        threads: int = 1,
        chunk: int = CHUNK,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, decay_mask, threads, chunk)
