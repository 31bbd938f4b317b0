"""`numformer sample`: generate text from a trained checkpoint, streamed as it is made.

    numformer sample [OUT_DIR_OR_CHECKPOINT | --out_dir DIR] [--prompt TEXT] [--max_new_tokens N] [--quantize Q] ...

The checkpoint is named as `eval` and `explore` name it, positional or --out_dir
(add_checkpoint_arguments), and found by load_for_sampling: the folder itself if it is a
checkpoint, else its best/, else its latest/; or a GGUF file (numformer.interop.gguf). The
prompt is encoded as transformers' tokenizer encodes it: behind the tokens the tokenizer puts
before every text (a Llama's BOS; nothing for GPT-2, Qwen2 or numformer's own tokenizers), so that
an empty prompt starts from the BOS alone.
The sampling itself (temperature, top-k, top-p, the KV cache and the sliding window) is
numformer.model.generate. --quantize bf16 or int8 loads the weights so stored (numformer.model.load), as
`eval`, `explore` and `bench --generate` take it.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np

from numformer.errors import CheckpointError, DataError, UsageError, check_text
from numformer.interop.gguf import is_gguf
from numformer.model.decoders import load
from numformer.model.generate import generate_tokens
from numformer.model.llama import Llama
from numformer.model.quantized import QUANTIZE
from numformer.parallel.process import one_blas_thread, tune_malloc


class StreamDecoder:
    """Turns a growing list of token ids into text increments, holding back a partial UTF-8
    character (byte-level BPE can split one across tokens).

    Each increment is decoded behind the token written just before it (`context`: at first the
    prompt's last token), and that token's own text is cut off the front: a "▁" tokenizer's decoder
    (Llama 2's) drops the space before the first token it decodes, which would glue every
    increment to the one before ("Speak" "▁now" -> "Speaknow")."""

    def __init__(self, tokenizer, context: int | None = None):
        self.tokenizer = tokenizer
        self.pending: list[int] = []     # ids not yet written out
        self.context = context           # the id written just before them, if any

    def _decode(self) -> str:
        if self.context is None:
            return self.tokenizer.decode(np.array(self.pending, dtype=np.int64))
        before = self.tokenizer.decode(np.array([self.context], dtype=np.int64))
        text = self.tokenizer.decode(np.array([self.context, *self.pending], dtype=np.int64))
        if text.startswith(before):
            return text[len(before):]
        return self.tokenizer.decode(np.array(self.pending, dtype=np.int64))

    def push(self, token: int) -> str:
        """Text for the ids so far, once it ends on a whole character; only the ids held since
        the last piece are decoded, so streaming stays linear in the output's length."""
        self.pending.append(int(token))
        text = self._decode()
        if text.endswith("\ufffd"):
            return ""
        self.context, self.pending = self.pending[-1], []
        return text

    def flush(self) -> str:
        text = self._decode() if self.pending else ""
        self.pending = []
        return text


# --------------------------------------------------------------------------------- the command

def add_arguments(parser) -> None:
    add_checkpoint_arguments(parser)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help='text to continue (default: a newline, "\\n")')
    src.add_argument("--prompt_file", default=None, help="read the prompt from this UTF-8 file")
    parser.add_argument("--max_new_tokens", type=int, default=500, help="tokens to generate per sample (default: 500)")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy (default: 0.8)")
    parser.add_argument("--top_k", type=int, default=200, help="sample from the k most likely tokens; 0 turns it off (default: 200)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling: keep the smallest set of tokens with mass >= p")
    parser.add_argument("--num_samples", type=int, default=1, help="how many samples to draw (default: 1)")
    parser.add_argument("--seed", type=int, default=1337, help="random seed, an integer >= 0 (default: 1337)")
    parser.add_argument("--no_cache", action="store_true", help="recompute the whole window for every token (slow; for checking)")
    add_quantize_argument(parser)


def add_quantize_argument(parser) -> None:
    """--quantize, as `sample`, `eval`, `explore` and `bench --generate` take it."""
    parser.add_argument("--quantize", default="none", choices=QUANTIZE,
                        help="store the weights as bf16 or int8 (blocks of 32 values with a scale each) and compute "
                             "with them: less memory and faster decoding, slightly different numbers; none keeps "
                             "float32 (a GGUF file's weights dequantized); keep reads a GGUF file's Q4_1 and Q8_0 "
                             "weights as the file stores them (default: none)")


def main(args) -> int:
    if args.max_new_tokens < 0:
        raise UsageError(f"--max_new_tokens must be >= 0, got {args.max_new_tokens}")
    if not (0 <= args.temperature < float("inf")):
        raise UsageError(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 0:
        raise UsageError(f"--top_k must be >= 0, got {args.top_k}")
    if args.top_p is not None and not (0.0 < args.top_p <= 1.0):
        raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.num_samples < 1:
        raise UsageError(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.seed < 0:
        raise UsageError(f"--seed must be an integer >= 0, got {args.seed}")
    one_blas_thread()   # sampling is one token at a time on one thread (see numformer.parallel.process)

    where = chosen_checkpoint(args)
    model = load_for_sampling(where, quantize=args.quantize)
    tok = model.tokenizer
    if tok is None:
        raise UsageError(f"{where}: the checkpoint has no tokenizer, so text cannot be encoded")
    prompt = read_prompt(args)
    text_ids = tok.encode(prompt)         # DataError naming an unknown character
    # what transformers' tokenizer(prompt) gives: the BOS a Llama was trained behind, then the text
    ids = np.concatenate([tok.special_prefix, text_ids])
    if len(ids) == 0:
        raise UsageError("the prompt encodes to no tokens; give at least one character")
    rng = np.random.default_rng(args.seed)
    out = sys.stdout
    for s in range(args.num_samples):
        if s:
            out.write("\n---------------\n")
        out.write(prompt)
        dec = StreamDecoder(tok, context=int(text_ids[-1]) if len(text_ids) else None)
        for nxt in generate_tokens(model, ids[None, :], args.max_new_tokens, temperature=args.temperature,
                                   top_k=args.top_k or None, top_p=args.top_p, rng=rng,
                                   use_cache=not args.no_cache):
            piece = dec.push(nxt[0])
            if piece:
                out.write(piece)
                out.flush()
        out.write(dec.flush() + "\n")
        out.flush()
    return 0


def add_checkpoint_arguments(parser) -> None:
    """The checkpoint to read, as `sample`, `eval` and `explore` all take it: a positional
    OUT_DIR_OR_CHECKPOINT or --out_dir (as `train` names the folder), default out. Read it back
    with chosen_checkpoint(args)."""
    parser.add_argument("checkpoint", nargs="?", default=None, metavar="OUT_DIR_OR_CHECKPOINT",
                        help="training output folder (its best/ or latest/ checkpoint is used), "
                             "a checkpoint folder itself, or a GGUF file (default: out)")
    parser.add_argument("--out_dir", default=None, metavar="OUT_DIR_OR_CHECKPOINT",
                        help="the same, as a flag, as `numformer train` names it")


def chosen_checkpoint(args, default: str = "out") -> str:
    """The folder named by add_checkpoint_arguments' two forms, or `default`; UsageError if both
    are given and name different folders."""
    given = [v for v in (args.checkpoint, args.out_dir) if v is not None]
    if len(given) == 2 and Path(given[0]) != Path(given[1]) and not _same_file(*given):
        raise UsageError(f"OUT_DIR_OR_CHECKPOINT {given[0]} and --out_dir {given[1]} name different folders; "
                         f"give one of them")
    return given[0] if given else default


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def load_for_sampling(out_dir, quantize: str = "none"):
    """The model to sample from (a GPT or a Llama, as its config.json says): a GGUF file, or
    out_dir itself if it is a checkpoint, else out_dir/best, else out_dir/latest. quantize "bf16"
    or "int8" stores its weights so (model.quantize; a float64 checkpoint is read as float32
    first); "keep" keeps a GGUF file's Q4_1 and Q8_0 weights as the file stores them (for a
    checkpoint, the same as "none"). Then keeps freed memory in the heap for what follows
    (process.tune_malloc), not before: the file's tensors, freed once the model holds its
    weights, are given back to the system instead of staying in the heap."""
    model = _load(Path(out_dir), quantize)
    tune_malloc()
    return model


def _load(root: Path, quantize: str):
    """The model of load_for_sampling."""
    if root.suffix.lower() == ".gguf" or is_gguf(root):
        return Llama.from_gguf(root, quantize=quantize)       # read_gguf says why a file is not a GGUF model
    dtype = None if quantize in ("none", "keep") else np.float32
    if root.is_file():
        return load(root, dtype=dtype, quantize=quantize)   # load_checkpoint explains why a file (a pickle, say) is refused
    for cand in (root, root / "best", root / "latest"):
        if (cand / "config.json").is_file():
            return load(cand, dtype=dtype, quantize=quantize)
    if not root.exists():
        raise CheckpointError(f"{root}: no such folder; train first (numformer train --out_dir {root})")
    raise CheckpointError(f"{root}: no checkpoint found (looked for {root}/best and {root}/latest)")


def read_prompt(args) -> str:
    """The prompt of --prompt or --prompt_file (a UTF-8 file), as `sample` and `explore` take it;
    a newline when neither is given."""
    if args.prompt_file is not None:
        path = args.prompt_file
        try:
            return _read_regular_file(path, "prompt file").decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    return "\n" if args.prompt is None else check_text(args.prompt, "--prompt")


def _read_regular_file(path, what: str) -> bytes:
    """The bytes of `path`, or DataError naming it: not found, or not a regular file (a FIFO, a
    folder, a device), which is refused without waiting on it: a FIFO is opened without blocking
    and never read."""
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}

    def refuse(mode):
        kind = kinds.get(stat.S_IFMT(mode), "not a file")
        return DataError(f"{path}: the {what} is not a regular file ({kind}); give a UTF-8 text file")

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise refuse(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # replaced by a FIFO since: no wait
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(mode)
        return f.read()
