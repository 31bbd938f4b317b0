"""What a run writes beside its checkpoints: metrics.jsonl (one JSON object per evaluation) and
loss.png. Neither is ever written over a file numformer did not write: metrics.jsonl must hold
numformer's rows, and loss.png must carry numformer's PNG text chunk (PNG_KEY)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def is_our_metrics(path: Path) -> bool:
    """Every line a JSON object with the keys numformer train writes (so it may be replaced)."""
    if path.is_symlink():
        return False
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return all(isinstance(r, dict) and {"step", "train_loss", "val_loss"} <= r.keys() for r in rows)


def append_metrics(out_dir: Path, tr, losses: dict, tokens_per_sec) -> None:
    from numformer.checkpoint import replace_file
    from numformer.optim.schedule import cosine_lr

    c = tr.cfg
    row = {"step": tr.iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
           "lr": cosine_lr(tr.iter_num, c.learning_rate, c.warmup_iters, c.lr_decay_iters, c.min_lr),
           "tokens_per_sec": tokens_per_sec, "time": time.time()}
    path = out_dir / "metrics.jsonl"
    rows = read_metrics(path)
    rows = [r for r in rows if r["step"] < tr.iter_num] + [row]   # a resumed run rewrites what follows
    replace_file(path, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                if isinstance(r, dict) and isinstance(r.get("step"), int):
                    rows.append(r)
            except json.JSONDecodeError:
                continue
    return rows


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


def plot_losses(out_dir: Path):
    """Write out_dir/loss.png: train and val loss at each evaluation. A loss.png that numformer
    did not write is left alone (returns None, as when there is nothing to plot)."""
    import io

    from numformer.checkpoint import replace_file

    rows = read_metrics(out_dir / "metrics.jsonl")
    png = out_dir / "loss.png"
    if len(rows) < 1 or os.path.lexists(png) and not is_our_plot(png):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(steps, [r["train_loss"] for r in rows], "o-", label="train", ms=3)
    ax.plot(steps, [r["val_loss"] for r in rows], "s-", label="val", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title("numformer train")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={PNG_KEY: "loss curve of numformer train"})
    plt.close(fig)
    replace_file(png, buf.getvalue())
    return png

