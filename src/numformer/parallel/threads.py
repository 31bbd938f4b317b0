"""Threads inside one process: a pool, and the data-parallel training step over a batch.

`loss_and_grad(model, idx, targets, threads=n)` splits the batch's rows into n shards; each shard
runs the model's forward and backward in its own Python thread, with a tape and a dropout
generator of its own (GPT.forward_tape / backward_tape) and the model's parameter and gradient
buffers shared. NumPy releases the GIL inside its loops and BLAS calls, so the elementwise work,
single-threaded in NumPy, runs on every core; OpenBLAS is held to one thread meanwhile.

Every shard adds its gradient straight into model.grads, with the adds to each parameter made in
shard order (ShardAdds), so no thread needs a gradient buffer of its own and the sum is the same,
bit for bit, however the threads are scheduled. Each shard's gradient is weighted by its share
of the counted targets, so the result equals the one-thread result up to float rounding.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from numformer.parallel.process import blas_threads

_POOLS = {}
_POOLS_LOCK = threading.Lock()


def thread_pool(n: int):
    """A process-wide pool of n worker threads, made on first use and kept."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="numformer")
    return pool


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of at most `size` elements that cover range(n) in order."""
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def groups(items: list, n: int) -> list[list]:
    """items cut into at most n contiguous, near-equal, non-empty groups (in order)."""
    n = max(1, min(int(n), len(items)))
    return [items[len(items) * r // n:len(items) * (r + 1) // n] for r in range(n)]


def parallel(fn, args: list) -> list:
    """[fn(a) for a in args], with each call on its own pool thread when there is more than one.
    NumPy releases the GIL inside its loops and BLAS calls, so the calls run on separate cores.
    Each call runs under the caller's NumPy error state (np.errstate), as it would on its thread.
    Not for use from inside a pool thread (the pool could run out of workers)."""
    if len(args) <= 1:
        return [fn(a) for a in args]
    state = np.geterr()

    def call(a):
        with np.errstate(**state):
            return fn(a)

    return list(thread_pool(len(args)).map(call, args))


def loss_and_grad(model, idx, targets, *, dloss: float = 1.0, threads: int = 1, backward: bool = True) -> float:
    """Mean loss of model.forward(idx, targets); its gradient (times dloss) is added into
    model.grads (unless backward=False: evaluation).

    With threads > 1 the batch is split into that many shards as described above. Dropout masks
    then come from per-shard generators seeded from model.rng, so its state still decides them.
    Every shard's forward runs before any backward, so input that the forward rejects (an id
    outside the vocabulary, say) raises before model.grads is touched."""
    idx, targets = np.asarray(idx), np.asarray(targets)
    B = idx.shape[0]
    n = max(1, min(int(threads), B))
    if n == 1:
        (_, loss), tape = model.forward_tape(idx, targets)
        if backward:
            model.backward_tape(tape, dloss)
        return loss

    bounds = [(B * r // n, B * (r + 1) // n) for r in range(n)]
    # each shard's loss is a mean over its own counted targets (-1 is ignored), so the shards
    # are weighted by their share of the counted targets
    counted = [int(np.count_nonzero(targets[lo:hi] != -1)) for lo, hi in bounds]
    total = max(sum(counted), 1)
    shares = [c / total for c in counted]
    seeds = model.rng.integers(0, 2**63, size=n) if model.config.dropout > 0 and model.training else [0] * n
    rngs = [np.random.default_rng(int(seed)) for seed in seeds]      # each shard's dropout masks
    tapes = [None] * n

    def shard_forward(r):
        lo, hi = bounds[r]
        (_, loss), tapes[r] = model.forward_tape(idx[lo:hi], targets[lo:hi], rngs[r])
        return loss * shares[r]

    adds = ShardAdds(model.grads.views, n)

    def shard_backward(r):
        try:
            model.backward_tape(tapes[r], dloss * shares[r],
                                accumulate=lambda name, value, index: adds.add(r, name, value, index))
            adds.finish(r)               # the adds still waiting for an earlier shard's
        except BaseException:
            adds.fail()                  # wake the others, who would wait forever
            raise

    # every forward first: bad ids or targets raise there, before any gradient is touched
    with blas_threads(1):
        try:
            losses = parallel(shard_forward, list(range(n)))
            if backward:
                parallel(shard_backward, list(range(n)))
        finally:
            tapes[:] = [None] * n        # the activations go now, also when a shard failed
    return float(sum(losses))


class ShardAdds:
    """The gradient adds of n shards of a threaded step into one shared buffer, each parameter's
    adds made in shard order: 0, 1, ..., n−1, and again for a parameter a shard adds to twice
    (the tied embedding: the LM head's share, later the lookup's).

    A shard's k-th add to a parameter has the slot k·n + r in that parameter's order. A shard
    queues its adds and makes each as soon as its slot comes up, without waiting; whatever is
    left is made by finish(r) at the end of its backward, which waits. Waiting cannot deadlock:
    an add waits only for the parameter's previous slot, and slot 0 never waits."""

    def __init__(self, views, n: int):
        self.views, self.n = views, n
        self.done = {}                             # name -> slots added so far
        self.issued = [dict() for _ in range(n)]   # per shard: name -> adds queued so far
        self.pending = [[] for _ in range(n)]      # per shard: (name, slot, value, index)
        self.cv = threading.Condition()
        self.failed = False

    def add(self, r: int, name: str, value, index) -> None:
        k = self.issued[r].get(name, 0)
        self.issued[r][name] = k + 1
        self.pending[r].append((name, k * self.n + r, value, index))
        self._drain(r, wait=False)

    def finish(self, r: int) -> None:
        self._drain(r, wait=True)

    def fail(self) -> None:
        with self.cv:
            self.failed = True
            self.cv.notify_all()

    def _drain(self, r: int, wait: bool) -> None:
        queue = self.pending[r]
        while queue:
            with self.cv:
                if self.failed:
                    raise RuntimeError("another shard of the threaded step failed")
                ready = [item for item in queue if self.done.get(item[0], 0) == item[1]]
                if not ready:
                    if not wait:
                        return
                    self.cv.wait()
                    continue
            for item in ready:     # this slot is ours alone until done[name] moves on
                name, slot, value, index = item
                self.views[name][index] += value
                with self.cv:
                    self.done[name] = slot + 1
                    self.cv.notify_all()
            queue[:] = [item for item in queue if not any(item is x for x in ready)]
