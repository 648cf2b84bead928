"""User mistakes on the command line.

A command raises `CommandError("what is wrong, and what to do")`; `gpucnn.cli.main`
prints it as one line `gpucnn <command>: error: <message>` on stderr and exits
with status 2 (argparse's status for usage errors). `GPUCNN_DEBUG=1` re-raises it
so the traceback shows.
"""
EXIT_USAGE = 2


class CommandError(Exception):
    """An expected user mistake (bad path, out-of-range number, wrong checkpoint...)."""
