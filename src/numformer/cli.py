"""The `numformer` command.

Each command lives in its own module, numformer.commands.<name>, which defines
`add_arguments(parser)` and `main(args) -> int`. Modules are imported only when their command
runs, so that `numformer --help` does not pay for NumPy, tokenizers or matplotlib.
"""

import argparse
import importlib
import sys

# name -> one-line summary; the module is numformer.commands.<name>. Order is the order of --help.
COMMANDS = {
    "train": "train a GPT on the built-in Shakespeare corpus or your own text",
    "sample": "generate text from a trained checkpoint (KV cache, streaming)",
    "explain": "compute the article's thirteen worked examples live",
    "explore": "one offline HTML page of a model's attention, predictions and formulas",
    "check": "check every op, reference and fast: finite differences, float32, PyTorch if installed",
    "embed": "sentence embeddings from a BERT-family model (all-MiniLM-L6-v2)",
    "similarity": "cosine similarity of two texts' embeddings",
    "convert": "convert GPT-2 checkpoints to and from Hugging Face format",
    "bench": "measure training tokens/s and GFLOP/s of a config on this machine",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not the whole usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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
            from numformer import __version__

            print(f"numformer {__version__}")
            return 0
        parser.print_help()
        return 0 if not argv else 2

    name, rest = argv[0], argv[1:]
    summary = COMMANDS[name]
    if name in ("train", "sample", "bench", "embed", "similarity"):
        from numformer.parallel.process import tune_malloc

        tune_malloc()
    module = importlib.import_module(f"numformer.commands.{name}")
    parser = _Parser(prog=f"numformer {name}", description=summary[0].upper() + summary[1:] + ".")
    module.add_arguments(parser)
    args = parser.parse_args(rest)

    from numformer.errors import NumformerError

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


if __name__ == "__main__":
    sys.exit(main())
