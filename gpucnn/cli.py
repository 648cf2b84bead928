"""`gpucnn` command line: a thin dispatcher over the command modules.

Each command module exposes `add_parser(subparsers)`, which adds its
sub-parser and sets `func=run` on it. Every mistake, argparse's own included,
is one line `gpucnn <command>: error: ...` on stderr with exit status 2.
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
    "gpucnn.commands.evaluate",  # gpucnn eval
    "gpucnn.commands.predict",   # gpucnn predict
    "gpucnn.commands.export",    # gpucnn export
    "gpucnn.commands.check",     # gpucnn check
    "gpucnn.commands.lr_find",   # gpucnn lr-find
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help (unless the help already
    says what the default is, or there is none to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or any(default is d for d in (None, False, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default)) or "none"
        return f"{text} (default: {default})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) and gpucnn's help format."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    from . import __version__
    parser = ArgumentParser(prog="gpucnn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gpucnn {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's parser, so the line names the command
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in metrics files
    try:
        return args.func(args) or 0
    except CommandError as exc:
        if os.environ.get("GPUCNN_DEBUG") == "1":
            raise
        print(f"gpucnn {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
