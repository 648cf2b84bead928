"""User mistakes on the command line, and the argument types that catch them early.

A command raises `CommandError("what is wrong, and what to do")`; `gpucnn.cli.main`
prints it as one line `gpucnn <command>: error: <message>` on stderr and exits
with `exc.exit_code` (2, argparse's status for usage errors, unless a subclass
says otherwise). `GPUCNN_DEBUG=1` re-raises it so the traceback shows.

The `type=` helpers below make argparse refuse out-of-range numbers itself
(`gpucnn train: error: argument --lr: must be > 0, got -1`).
"""
import argparse

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CommandError(Exception):
    """An expected user mistake (bad path, out-of-range number, wrong checkpoint...)."""
    exit_code = EXIT_USAGE


class RunFailed(CommandError):
    """A run that started but cannot go on (disk full, non-finite loss): one line, exit 1."""
    exit_code = EXIT_FAILURE


def _number(kind, text):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None


def ranged(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: `kind` (int or float) within [low, high] (open ends on request)."""
    def parse(text):
        value = _number(kind, text)
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            lo = "" if low is None else f"{'(' if low_open else '['}{low}, "
            hi = "" if high is None else f"{high}{')' if high_open else ']'}"
            want = (f"in {lo}{hi}" if low is not None and high is not None
                    else f"{'>' if low_open else '>='} {low}" if low is not None
                    else f"{'<' if high_open else '<='} {high}")
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


positive_int = ranged(int, 1)
nonnegative_int = ranged(int, 0)
positive_float = ranged(float, 0, low_open=True)
nonnegative_float = ranged(float, 0)
fraction = ranged(float, 0, 1, high_open=True)  # [0, 1): split fractions, probabilities
