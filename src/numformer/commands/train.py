"""`numformer train`: train a GPT or, with --arch llama, a Llama (see numformer.training for the
loop, the session around it and their settings).

Settings come from the defaults (with --resume: the resumed run's own), then an optional TOML
file, then the flags given on the command line. Flags are flat (--n_layer, --batch_size, ...)
and each has a TOML key of the same name.
"""

from __future__ import annotations

import argparse

from numformer.errors import UsageError
from numformer.parallel.mpi import init_world
from numformer.training.config import CHOICES, HELP, fields, load_toml, parse_bool
from numformer.training.session import run


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="optional TOML file setting any of the flags below; flags given on the command line override it")
    for name, (kind, default) in fields().items():
        conv = {"int": int, "float": float, "str": str, "bool": _bool_flag}[kind]
        parser.add_argument(f"--{name}", type=conv, default=None, metavar=name.upper() if kind != "bool" else "BOOL",
                            choices=CHOICES.get(name),
                            help=f"{HELP[name]} (default: {str(default).lower() if kind == 'bool' else default})")
    parser.add_argument("--resume", action="store_true",
                        help="continue from out_dir/latest with its weights, optimizer state and RNG state")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even if out_dir already holds a checkpoint (it is replaced at the first evaluation)")
    parser.add_argument("--cache_dir", default=None, help="token cache folder (default: $NUMFORMER_CACHE or ~/.cache/numformer)")
    parser.add_argument("--no_plot", action="store_true", help="do not write loss.png")


def _bool_flag(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


def given_settings(args) -> dict:
    """The settings the user gave: the TOML file's, then the flags', as flat keys."""
    given = {}
    if args.config:
        given.update(load_toml(args.config))
    for name in fields():
        v = getattr(args, name, None)
        if v is not None:
            given[name] = v
    if given.get("lora_rank", 1) < 1:    # 0 is the default's "no adapters"; asking for it is a mistake
        raise UsageError(f"lora_rank must be >= 1, got {given['lora_rank']} (leave it out to train every weight)")
    return given


def main(args) -> int:
    world = init_world()
    # under MPI: an error on any rank stops the whole job with one line from that rank, never a hang
    with world.guard("numformer train"):
        given = given_settings(args) if world.is_main else None      # rank 0 reads the TOML file
        summary = run(given, resume=args.resume, overwrite=args.overwrite, cache_dir=args.cache_dir,
                      plot=not args.no_plot, world=world)
    return 130 if summary.get("interrupted") else 0
