"""`numformer eval`: the loss, perplexity and bits per byte of a text file under a checkpoint.

    numformer eval [OUT_DIR_OR_CHECKPOINT | --out_dir DIR] --data FILE [--stride S] [--json]

The checkpoint is found as `numformer sample` finds it (a checkpoint folder, or a run's out_dir:
its best/, else latest/). The windowing (block_size windows every S tokens, every token after
the first scored once) is numformer.model.evaluate.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from numformer.commands.sample import add_checkpoint_arguments

    add_checkpoint_arguments(parser)
    parser.add_argument("--data", required=True, metavar="FILE", help="the UTF-8 text file to evaluate")
    parser.add_argument("--stride", type=int, default=None, metavar="S",
                        help="start a block_size window every S tokens; with S < block_size the windows overlap "
                             "and each scores only the tokens the previous one did not, with more context "
                             "(default: block_size, no overlap)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"loss", "perplexity", "bits_per_byte", "tokens"}')
    parser.add_argument("--threads", type=int, default=0, help="threads over each batch of windows (default 0: one per core)")


def main(args) -> int:
    import json
    from pathlib import Path

    from numformer.commands.sample import chosen_checkpoint, load_for_sampling
    from numformer.errors import DataError, UsageError
    from numformer.model.evaluate import evaluate_text
    from numformer.parallel.process import cores

    if not args.data.strip():
        raise UsageError("--data is empty; give a text file")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    path = Path(args.data)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    model = load_for_sampling(chosen_checkpoint(args))
    if args.stride is not None and not 1 <= args.stride <= model.config.block_size:
        raise UsageError(f"--stride must be between 1 and the model's block_size ({model.config.block_size}), "
                         f"got {args.stride}")
    r = evaluate_text(model, text, stride=args.stride, threads=args.threads or cores(), source=str(path))
    if args.json:
        print(json.dumps({k: r[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens")}))
    else:
        stride = args.stride or model.config.block_size
        print(f"{path}: loss {r['loss']:.4f} nats/token, perplexity {r['perplexity']:.3f}, "
              f"{r['bits_per_byte']:.4f} bits/byte, {r['tokens']:,} tokens "
              f"(windows of {model.config.block_size} every {stride} tokens)")
    return 0
