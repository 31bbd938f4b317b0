"""What a run writes beside its checkpoints, metrics.jsonl (one JSON object per evaluation) and
loss.png, and the gradient's health that goes into them.

Gradient health: every step records the global gradient norm before clipping and whether clipping
changed it (is_clipped); the step before each evaluation also measures, per weight matrix,
‖Δθ‖ / ‖θ‖ (update_ratios), the size of the update against the size of the weights (about 1e-3
is the usual healthy range for Adam; far above, training is unstable, far below, it learns
little).

A row of metrics.jsonl: step, train_loss, val_loss, lr, tokens_per_sec, time, and the gradient's
health: grad_norm, the global gradient norm before clipping of the step just before this row, and
clipped, whether clipping scaled it (both null at a row with no step before it); grad_norms,
[step, norm] of every step since the previous row, and clipped_steps, how many of them were
clipped; grad_clip, the run's clipping threshold (0: none); update_ratio, ‖Δθ‖/‖θ‖ of that last
step for every weight matrix, by name. loss.png has two panels: the losses, and the gradient norm
of every step with the clipped steps marked. Neither is ever written over a file numformer did not
write: metrics.jsonl must hold numformer's rows, and loss.png must carry numformer's PNG text chunk
(PNG_KEY)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np

from numformer.checkpoint import replace_file

# ------------------------------------------------------------------------------- gradient health


def is_clipped(norm: float, grad_clip: float) -> bool:
    """Did clip_grad_norm(grads, grad_clip) scale a gradient of this norm? (its rule: c < 1)."""
    return grad_clip > 0 and grad_clip / (norm + 1e-6) < 1.0


def update_ratios(views: dict, before: np.ndarray, after: np.ndarray) -> dict:
    """‖Δθ‖ / ‖θ‖ for every weight matrix (two or more dimensions) of a flat buffer whose named
    views are `views`, between its values `before` and `after` an optimizer step."""
    out, offset = {}, 0
    for name, v in views.items():
        n = v.size
        if v.ndim >= 2:
            new = after[offset:offset + n].astype(np.float64)
            delta = new - before[offset:offset + n]
            norm = float(np.linalg.norm(new))
            out[name] = float(np.linalg.norm(delta)) / norm if norm > 0 else None
        offset += n
    return out


# ------------------------------------------------------------------------------- metrics.jsonl


def is_our_metrics(path: Path) -> bool:
    """A regular file (not a link) whose every line is a row numformer train writes: a JSON object
    with an integer step, train_loss and val_loss (so it may be replaced). A line that scan_metrics
    skips makes the file someone else's."""
    if path.is_symlink() or not path.is_file():       # a FIFO would make the read wait for a writer
        return False
    try:
        rows, skipped = scan_metrics(path)
    except OSError:
        return False
    return not skipped and all({"step", "train_loss", "val_loss"} <= r.keys() for r in rows)


def append_metrics(out_dir: Path, tr, losses: dict, tokens_per_sec) -> None:
    """Add the row of the evaluation at tr.iter_num (a numformer.training.loop.Trainer), with the
    gradient health gathered since the last one, to out_dir/metrics.jsonl."""
    row = {"step": tr.iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "lr": tr.lr(),
           "tokens_per_sec": tokens_per_sec, "time": time.time()}
    health = getattr(tr, "grad_health", [])
    last = health[-1] if health else (None, None, None)
    row.update(grad_norm=last[1], clipped=last[2], grad_norms=[[step, norm] for step, norm, _ in health],
               clipped_steps=sum(bool(clipped) for *_, clipped in health), grad_clip=tr.cfg.grad_clip,
               update_ratio=dict(getattr(tr, "update_ratio", {})))
    if health:
        tr.grad_health = []                   # the next row holds the steps after this one
    path = out_dir / "metrics.jsonl"
    rows = read_metrics(path)
    rows = [r for r in rows if r["step"] < tr.iter_num] + [row]   # a resumed run rewrites what follows
    replace_file(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl that can be read (see scan_metrics); none if there is no such file."""
    return scan_metrics(path)[0]


def scan_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of metrics.jsonl that can be read: JSON objects with an integer "step", one a line.
    And, for every other line but blank ones, "line N: why it was skipped" (not UTF-8, not JSON,
    nested too deeply, an integer of too many digits, or not such an object). A path that is not
    a regular file (missing, a folder, a FIFO) has no rows."""
    rows, skipped = [], []
    if not path.is_file():
        return rows, skipped
    for n, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            skipped.append(f"line {n}: not UTF-8 (byte {e.start + 1})")
        except json.JSONDecodeError as e:
            skipped.append(f"line {n}: not JSON ({e.msg} at column {e.colno})")
        except RecursionError:
            skipped.append(f"line {n}: JSON nested too deeply")
        except ValueError:                # Python reads no integer of more than 4,300 digits
            skipped.append(f"line {n}: an integer of too many digits")
        else:
            if isinstance(r, dict) and type(r.get("step")) is int:
                rows.append(r)
            else:
                skipped.append(f'line {n}: not a JSON object with an integer "step"')
    return rows, skipped


# ------------------------------------------------------------------------------- loss.png

PNG_KEY = "numformer"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_our_plot(path: Path) -> bool:
    """A PNG file with numformer's text chunk (PNG_KEY) before its image data."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if not head.startswith(_PNG_SIGNATURE):
        return False
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(head):           # chunks: length (4, big-endian), type (4), data, CRC (4)
        length = int.from_bytes(head[pos:pos + 4], "big")
        kind = head[pos + 4:pos + 8]
        data = head[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and data.split(b"\0", 1)[0] == PNG_KEY.encode("latin-1"):
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


def _plot_grad_norms(gx, rows, norms) -> None:
    """The lower panel: the gradient norm before clipping at every step, clipped steps in red,
    and the clipping threshold."""
    gx.set_xlabel("step")
    gx.set_ylabel("gradient norm (before clipping)")
    gx.grid(alpha=0.3)
    if not norms:
        gx.text(0.5, 0.5, "no steps yet", ha="center", va="center", transform=gx.transAxes, color="0.5")
        return
    gx.plot([s for s, _ in norms], [n for _, n in norms], "-", lw=0.8, color="C2", label="global norm")
    clip = next((r.get("grad_clip") for r in reversed(rows) if r.get("grad_clip")), 0)
    if clip:
        over = [(s, n) for s, n in norms if is_clipped(n, clip)]
        if over:
            gx.plot([s for s, _ in over], [n for _, n in over], ".", color="C3", ms=4, label="clipped")
        gx.axhline(clip, color="C3", lw=0.8, ls="--", label=f"grad_clip {clip:g}")
    if max(n for _, n in norms) > 20 * max(min(n for _, n in norms), 1e-12):
        gx.set_yscale("log")
    gx.legend(fontsize="small")


def plot_losses(out_dir: Path):
    """Write out_dir/loss.png: train and val loss at each evaluation. A loss.png that numformer
    did not write is left alone (returns None, as when there is nothing to plot)."""
    rows = read_metrics(out_dir / "metrics.jsonl")
    png = out_dir / "loss.png"
    if len(rows) < 1 or os.path.lexists(png) and not is_our_plot(png):
        return None
    # imported here, not at the top: choosing the Agg backend is for this file alone, not for a
    # program that imports numformer and draws its own figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    norms = [(s, n) for r in rows for s, n in (r.get("grad_norms") or [])]
    fig, (ax, gx) = plt.subplots(2, 1, figsize=(7, 6.4), dpi=110, height_ratios=[3, 2], sharex=True)
    ax.plot(steps, [r["train_loss"] for r in rows], "o-", label="train", ms=3)
    ax.plot(steps, [r["val_loss"] for r in rows], "s-", label="val", ms=3)
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title("numformer train")
    ax.grid(alpha=0.3)
    ax.legend()
    _plot_grad_norms(gx, rows, norms)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={PNG_KEY: "loss curve of numformer train"})
    plt.close(fig)
    replace_file(png, buf.getvalue())
    return png

