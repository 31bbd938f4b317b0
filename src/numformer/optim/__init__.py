"""The optimizers: gradient descent, Adam, AdamW, gradient clipping and the learning-rate schedule.

    opt = AdamW(params, lr=1e-3, weight_decay=0.1, decay_mask=mask)
    norm = clip_grad_norm(grads, 1.0)
    opt.step(grads, lr=cosine_lr(it, 1e-3, 100, 2000, 1e-4))

`params` is one flat ndarray or a dict of arrays (views into one); each update is in place.
"""

from numformer.optim.adam import Adam, AdamW
from numformer.optim.clip import clip_grad_norm
from numformer.optim.schedule import cosine_lr
from numformer.optim.sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "clip_grad_norm", "cosine_lr"]
