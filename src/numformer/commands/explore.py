"""`numformer explore [OUT_DIR_OR_CHECKPOINT | --out_dir OUT_DIR_OR_CHECKPOINT] --prompt TEXT --out explorer.html [--quantize Q]`

Runs a trained GPT or Llama on a prompt and writes one self-contained HTML page of what it does:
attention per layer and head (a Llama: per query head, with the key/value head each one shares),
the next-token distribution with the sampling controls of `numformer sample`, the prompt shaded by
probability, the logit lens, the residual stream and the positions (a Llama: RoPE's rotation
angles, as it has no position table), the training curves from metrics.jsonl, and the formulas
the model runs (numformer.explore).

The checkpoint is found as `numformer sample` finds it: a GGUF file, the folder itself if it is a
checkpoint (`numformer train --arch llama`, `numformer convert --from_hf` or `--from_gguf` make
Llama ones), else its best/, else its latest/. With --quantize bf16 or int8 the page shows the model whose
weights are rounded as that format stores them: the quantized weights, dequantized to float32
for the page's trace (numformer.explore.trace runs the reference ops on float32 weights), which
computes what the quantized model computes, up to float32 rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

from numformer.checkpoint import replace_file
from numformer.commands.sample import (add_checkpoint_arguments, add_quantize_argument, chosen_checkpoint,
                                       load_for_sampling, read_prompt)
from numformer.errors import UsageError
from numformer.explore import build_page, explore_data, is_explorer_page
from numformer.explore.data import readable
from numformer.training.metrics import scan_metrics


def add_arguments(parser) -> None:
    add_checkpoint_arguments(parser)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help='text to run the model on (default: a newline, "\\n")')
    src.add_argument("--prompt_file", default=None, help="read the prompt from this UTF-8 file")
    parser.add_argument("--out", default="explorer.html",
                        help="the HTML file to write (default: explorer.html); an existing file is "
                             "replaced only if it is a page numformer explore wrote, unchanged since")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="the page's starting temperature; 0 is greedy (default: 0.8, as numformer sample)")
    parser.add_argument("--top_k", type=int, default=200,
                        help="the page's starting top-k; 0 turns it off (default: 200, as numformer sample)")
    parser.add_argument("--top_p", type=float, default=None,
                        help="the page's starting top-p (default: off, as numformer sample)")
    add_quantize_argument(parser)


def main(args) -> int:
    args.out_dir = chosen_checkpoint(args)
    if not (0 <= args.temperature < float("inf")):
        raise UsageError(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top_k must be >= 0, got {args.top_k}")
    if args.top_p is not None and not (0.0 < args.top_p <= 1.0):
        raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
    out = Path(args.out)
    _check_out(out)

    model = load_for_sampling(args.out_dir, quantize=args.quantize)
    if model.quantization != "none":
        # the page's trace reads float32 weights: those the quantized ones stand for
        model = model.dequantized()
    tok = model.tokenizer
    if tok is None:
        raise UsageError(f"{args.out_dir}: the checkpoint has no tokenizer, so text cannot be encoded")
    ids = tok.encode(read_prompt(args))       # DataError naming an unknown character
    if len(ids) == 0:
        raise UsageError("the prompt encodes to no tokens; give at least one character")
    block = model.config.block_size
    notices = []
    if len(ids) > block:
        notices.append(f"the prompt is {len(ids)} tokens, more than the model's context of {block}; "
                       f"the page shows its last {block}")
        print(f"numformer explore: note: {notices[-1]}", file=sys.stderr)
        ids = ids[-block:]
    if args.quantize != "none":
        notices.append(f"weights rounded as --quantize {args.quantize} stores them")
    notice = "; ".join(notices) or None

    ckpt, metrics = _checkpoint_and_metrics(Path(args.out_dir))
    data = explore_data(model, ids, tokenizer=tok, metrics=_read_metrics(metrics) if metrics else None,
                        sampling={"temperature": args.temperature, "top_k": args.top_k or None,
                                  "top_p": args.top_p},
                        source=str(ckpt), notice=notice)
    if data["overflow"]:
        print(f"numformer explore: note: {data['overflow']}", file=sys.stderr)
    page = build_page(data).encode("utf-8")
    _check_out(out)                            # again: the model took a while to load
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_file(out, page)                    # the one atomic writer: a crash never leaves half a page
    cfg = model.config
    shared = getattr(cfg, "n_kv_head", cfg.n_head)           # a Llama's key/value heads
    kv = f" ({shared} key/value)" if shared != cfg.n_head else ""
    print(f"wrote {readable(str(out))} ({len(page) / 1e6:.2f} MB): {len(ids)} tokens, {cfg.n_layer} layers x "
          f"{cfg.n_head} heads{kv}, from {readable(str(ckpt))}")
    return 0


def _check_out(out: Path) -> None:
    """Refuse to write over a link, a folder, anything but a regular file (reading a FIFO would wait
    for a writer), or a file that is not a page numformer explore wrote (explore.is_explorer_page:
    HEAD and the SHA-256 of the rest; a page edited since is refused)."""
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; refusing to replace it (give the path it points to)")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'explorer.html'}")
    if out.exists() and not out.is_file():
        raise UsageError(f"--out {out} is not a regular file (a FIFO, a device or a socket); give a file name")
    if out.exists():
        try:
            ours = is_explorer_page(out)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot read the existing file ({e.strerror})") from None
        if not ours:
            raise UsageError(f"--out {out} exists and is not a page numformer explore wrote (or it was "
                             f"changed since); choose another --out, or remove the file")


def _checkpoint_and_metrics(root: Path):
    """The checkpoint folder load_for_sampling takes (the folder, its best/ or its latest/), and
    the run's metrics.jsonl (in the training folder, above the checkpoint) or None."""
    ckpt = next((c for c in (root, root / "best", root / "latest") if (c / "config.json").is_file()), root)
    run = ckpt.parent
    metrics = next((m for m in (run / "metrics.jsonl", root / "metrics.jsonl") if m.is_file()), None)
    return ckpt, metrics


def _read_metrics(path: Path) -> list[dict]:
    """The rows of the run's metrics.jsonl; lines that cannot be read are skipped with a note."""
    try:
        rows, skipped = scan_metrics(path)
    except OSError as e:
        rows, skipped = [], [f"cannot be read ({e.strerror or type(e).__name__})"]
    if skipped:
        what = (f"skipped {len(skipped)} of {len(rows) + len(skipped)} rows that numformer cannot read"
                if rows else "no row could be read; the page shows no training curves")
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        print(f"numformer explore: note: {readable(str(path))}: {what} ({skipped[0]}{more})", file=sys.stderr)
    return rows
