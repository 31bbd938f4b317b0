"""What every optimizer shares: the parameters seen as one flat vector, the step count, state I/O.

An optimizer is given either one ndarray (normally the model's flat parameter buffer) or a dict
name -> ndarray (normally views into that buffer). Either way it sees the parameters as a list of
1-D *segments* laid end to end: segment k covers positions [start, stop) of a virtual flat vector
of N elements. The optimizer's own state (Adam's m and v) is flat (N,) arrays in that same
layout, so an update is a handful of ufunc calls per segment (Adam: per cache-sized chunk of a
segment), written with `out=` so that a step allocates nothing large. With a flat buffer there is
exactly one segment.

The parameters are updated in place: the caller's arrays (and every view into them) see the new
values. They must therefore be C-contiguous, so that the 1-D view really is a view.
"""

from dataclasses import dataclass

import numpy as np

from numformer.errors import CheckpointError

# Beyond this many separate decay runs inside one segment, a boolean `where=` mask beats a Python
# loop over slices (an element-wise random mask would otherwise mean a loop over N/2 slices).
_MAX_RUNS = 64


@dataclass
class Segment:
    """One parameter array seen as a 1-D view, and where it sits in the flat state vectors."""

    name: str | None
    param: np.ndarray  # (n,) view of the caller's array
    start: int
    stop: int
    decay: list | np.ndarray  # local [a, b) runs that get weight decay, or a bool (n,) mask


class Optimizer:
    """Base class: parameter layout, per-step learning rate, step count and state_dict I/O."""

    def __init__(self, params, lr: float):
        if not lr >= 0.0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        self.lr = float(lr)
        self.step_count = 0
        self._is_dict = isinstance(params, dict)
        self.segments = _segments(params)
        self.dtype = self.segments[0].param.dtype
        self.numel = self.segments[-1].stop

    # -- helpers for subclasses ---------------------------------------------------------------

    def _zeros(self) -> np.ndarray:
        """A flat (N,) buffer in the parameters' dtype (state or scratch)."""
        return np.zeros(self.numel, dtype=self.dtype)

    def _set_decay_mask(self, decay_mask) -> None:
        """Record, per segment, which elements get weight decay (None means all of them)."""
        flat = _flatten_mask(decay_mask, self.segments, self._is_dict)
        for seg in self.segments:
            local = flat[seg.start : seg.stop] if flat is not None else None
            seg.decay = _runs(local, seg.stop - seg.start)

    def _grad_views(self, grads) -> list[np.ndarray]:
        """The gradients as (n,) arrays matching self.segments, after checking their structure."""
        if self._is_dict != isinstance(grads, dict):
            kind = "a dict" if self._is_dict else "one ndarray"
            raise ValueError(f"grads must have the same structure as params ({kind})")
        if self._is_dict:
            if grads.keys() != {seg.name for seg in self.segments}:
                missing = sorted({s.name for s in self.segments} - grads.keys())
                extra = sorted(grads.keys() - {s.name for s in self.segments})
                raise ValueError(f"grads keys differ from params: missing {missing}, extra {extra}")
            arrays = [grads[seg.name] for seg in self.segments]
        else:
            arrays = [grads]
        views = []
        for seg, g in zip(self.segments, arrays):
            g = np.asarray(g)
            if g.size != seg.stop - seg.start or g.dtype != self.dtype:
                where = f" for {seg.name!r}" if seg.name is not None else ""
                raise ValueError(
                    f"grad{where} has shape {g.shape} dtype {g.dtype}, "
                    f"param has {seg.stop - seg.start} elements dtype {self.dtype}"
                )
            views.append(g.reshape(-1))
        return views

    def _lr(self, lr) -> float:
        return self.lr if lr is None else float(lr)

    # -- state --------------------------------------------------------------------------------

    _STATE_BUFFERS: tuple[str, ...] = ()  # names of flat state arrays, e.g. ("m", "v")

    def state_dict(self) -> dict:
        """{"step": int, and a copy of each flat (N,) state buffer}. Enough to resume bit-exactly."""
        state = {"step": int(self.step_count)}
        for key in self._STATE_BUFFERS:
            state[key] = getattr(self, key).copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned. Raises CheckpointError if it does not fit."""
        expected = {"step", *self._STATE_BUFFERS}
        if set(state) != expected:
            raise CheckpointError(
                f"optimizer state has keys {sorted(state)}, expected {sorted(expected)}"
            )
        step = state["step"]
        if isinstance(step, np.ndarray) and step.shape == ():
            step = step.item()
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise CheckpointError(f"optimizer step must be a non-negative int, got {step!r}")
        for key in self._STATE_BUFFERS:
            arr = np.asarray(state[key])
            if arr.shape != (self.numel,) or arr.dtype != self.dtype:
                raise CheckpointError(
                    f"optimizer state {key!r} has shape {arr.shape} dtype {arr.dtype}, "
                    f"expected ({self.numel},) {self.dtype}"
                )
        for key in self._STATE_BUFFERS:
            np.copyto(getattr(self, key), state[key])
        self.step_count = int(step)


def _segments(params) -> list[Segment]:
    if isinstance(params, dict):
        items = list(params.items())
        if not items:
            raise ValueError("params is an empty dict")
    elif isinstance(params, np.ndarray):
        items = [(None, params)]
    else:
        raise TypeError(f"params must be an ndarray or a dict of ndarrays, got {type(params)}")
    segments, start = [], 0
    dtype = items[0][1].dtype if isinstance(items[0][1], np.ndarray) else None
    for name, p in items:
        where = f"param {name!r}" if name is not None else "params"
        if not isinstance(p, np.ndarray):
            raise TypeError(f"{where} must be an ndarray, got {type(p)}")
        if not np.issubdtype(p.dtype, np.floating):
            raise ValueError(f"{where} must be floating point, got {p.dtype}")
        if p.dtype != dtype:
            raise ValueError(f"{where} has dtype {p.dtype}, the others {dtype}: use one dtype")
        if not p.flags.c_contiguous or not p.flags.writeable:
            raise ValueError(f"{where} must be a writeable C-contiguous array (updated in place)")
        flat = p.reshape(-1)  # (n,) a view, since p is contiguous
        segments.append(Segment(name, flat, start, start + flat.size, [(0, flat.size)]))
        start += flat.size
    return segments


def _flatten_mask(decay_mask, segments, is_dict) -> np.ndarray | None:
    """decay_mask (same structure as params, or None) -> bool (N,) array, or None for 'all'."""
    if decay_mask is None:
        return None
    n = segments[-1].stop
    flat = np.empty(n, dtype=bool)
    if is_dict:
        if not isinstance(decay_mask, dict) or decay_mask.keys() != {s.name for s in segments}:
            raise ValueError("decay_mask must be a dict with the same keys as params")
        for seg in segments:
            m = np.asarray(decay_mask[seg.name])
            size = seg.stop - seg.start
            if m.shape == ():  # one flag for the whole parameter
                flat[seg.start : seg.stop] = bool(m)
            elif m.size == size:
                flat[seg.start : seg.stop] = m.reshape(-1).astype(bool)
            else:
                raise ValueError(
                    f"decay_mask[{seg.name!r}] has shape {m.shape}, param has {size} elements"
                )
    else:
        m = np.asarray(decay_mask)
        if m.size != n:
            raise ValueError(f"decay_mask has shape {m.shape}, params has {n} elements")
        flat[:] = m.reshape(-1).astype(bool)
    return flat


def _runs(mask: np.ndarray | None, n: int) -> list | np.ndarray:
    """Contiguous [a, b) runs where mask is True; the mask itself when there are too many runs."""
    if mask is None:
        return [(0, n)]
    edges = np.flatnonzero(np.diff(mask.astype(np.int8), prepend=0, append=0))  # (2 * runs,)
    if edges.size // 2 > _MAX_RUNS:
        return mask.copy()
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]
