"""`numformer eval`: the loss, perplexity and bits per byte of a text file under a checkpoint.

    numformer eval [OUT_DIR_OR_CHECKPOINT | --out_dir DIR] --data FILE [--stride S] [--quantize Q] [--json]

The checkpoint is found as `numformer sample` finds it (a checkpoint folder, or a run's out_dir:
its best/, else latest/). --data is read exactly as `numformer train` reads its --data
(numformer.data.corpus.open_corpus: a leading BOM dropped, \r\n and \r made \n; a folder of .txt
files and `shakespeare` work too), in pieces, never whole. The windowing (block_size windows
every S tokens, every token after the first scored once) and the streaming are
numformer.model.evaluate.
"""

from __future__ import annotations

import json
import math

from numformer.commands.sample import add_checkpoint_arguments, add_quantize_argument, chosen_checkpoint, load_for_sampling
from numformer.data.corpus import open_corpus
from numformer.errors import UsageError
from numformer.model.evaluate import evaluate_corpus
from numformer.parallel.process import cores


def add_arguments(parser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--data", required=True, metavar="FILE", help="the UTF-8 text to evaluate: a file, a folder of .txt files or 'shakespeare', read as train reads --data")
    parser.add_argument("--stride", type=int, default=None, metavar="S",
                        help="start a block_size window every S tokens; with S < block_size the windows overlap "
                             "and each scores only the tokens the previous one did not, with more context "
                             "(default: block_size, no overlap)")
    parser.add_argument("--json", action="store_true",
                        help='print one JSON object: {"loss", "perplexity", "bits_per_byte", "tokens"}')
    parser.add_argument("--threads", type=int, default=0, help="threads over each batch of windows (default 0: one per core)")
    add_quantize_argument(parser)


def main(args) -> int:
    if not args.data.strip():
        raise UsageError("--data is empty; give a text file")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    corpus = open_corpus(args.data)         # the path is checked here, the text as it is read
    model = load_for_sampling(chosen_checkpoint(args), quantize=args.quantize)
    if args.stride is not None and not 1 <= args.stride <= model.config.block_size:
        raise UsageError(f"--stride must be between 1 and the model's block_size ({model.config.block_size}), "
                         f"got {args.stride}")
    r = evaluate_corpus(model, corpus, stride=args.stride, threads=args.threads or cores())
    if args.json:
        # strict JSON: a perplexity past float64's range (loss >= 710 nats) is null, never Infinity
        row = {k: r[k] for k in ("loss", "perplexity", "bits_per_byte", "tokens")}
        row["perplexity"] = row["perplexity"] if math.isfinite(row["perplexity"]) else None
        print(json.dumps(row, allow_nan=False))
    else:
        stride = args.stride or model.config.block_size
        weights = "" if args.quantize == "none" else f", weights {args.quantize}"
        print(f"{corpus.name}: loss {r['loss']:.4f} nats/token, perplexity {r['perplexity']:.3f}, "
              f"{r['bits_per_byte']:.4f} bits/byte, {r['tokens']:,} tokens "
              f"(windows of {model.config.block_size} every {stride} tokens{weights})")
    return 0
