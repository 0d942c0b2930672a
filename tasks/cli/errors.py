"""The one exception `mailroom` commands raise for bad input, and how it reaches the operator.

docs/contract.md: bad input to any command is exactly one non-empty line on stderr naming what is
wrong, exit status 2, nothing done. Commands raise `UsageError` before they touch anything;
`tasks.cli.main` prints it as `mailroom: <message>` and returns `USAGE`.
"""

from __future__ import annotations

import argparse

OK = 0  # the command did what it was asked
FAILED = 1  # it ran, and what it checked or looked up failed (an unknown id, a failing step)
USAGE = 2  # bad input or a bad setting: nothing was done


class UsageError(ValueError):
    """Bad command-line input; str() is the one line to show (whitespace is folded)."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """`text` folded onto one line (a placeholder if empty: the line must say something)."""
    return " ".join(text.split()) or "invalid input"


def positive_int(text: str) -> int:
    """An argparse `type`: a whole number of at least 1, or one line saying why not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value
