"""`gpucnn` command line: a thin dispatcher over the command modules.

Each command module exposes `add_parser(subparsers)`, which adds its
sub-parser and sets `func=run` on it.
"""
import argparse
import importlib
import os
import sys

from .commands.errors import EXIT_USAGE, CommandError

COMMANDS = (
    "gpucnn.commands.train",     # gpucnn train
    "gpucnn.commands.summary",   # gpucnn summary
    "gpucnn.commands.search",    # gpucnn search
    "gpucnn.benchmark.command",  # gpucnn bench
    "gpucnn.commands.check",     # gpucnn check
    "gpucnn.commands.lr_find",   # gpucnn lr-find
)


def build_parser():
    parser = argparse.ArgumentParser(prog="gpucnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except CommandError as exc:
        if os.environ.get("GPUCNN_DEBUG") == "1":
            raise
        print(f"gpucnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
