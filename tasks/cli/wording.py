"""How `mailroom` commands word their human output: counts with the right plural, ages, tables,
and progress lines on stderr for long operations. (Their `--json` forms are the stable ones.)"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from workers.model.reply import printable

_PLURALS = {
    "delivery": "deliveries",
    "entry": "entries",
    "recipient": "recipients",
    "dead letter": "dead letters",
    "message": "messages",
    "address": "addresses",
}


def counted(n: int, word: str) -> str:
    """`1 delivery`, `2 deliveries`, `0 deliveries`."""
    return f"{n} {word if n == 1 else _PLURALS.get(word, word + 's')}"


def age(seconds: float) -> str:
    """A duration as an operator reads it at a glance: `42s`, `5m07s`, `3h02m`, `2d04h`."""
    whole = max(int(seconds), 0)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Rows under column headers, each column as wide as its widest cell; the last column is
    left ragged. Every cell is escaped (`printable`): values may hold a server's bytes."""
    cells = [[printable(str(c)) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return lines


def progress(label: str, every: int) -> Callable[[int, int], None]:
    """A progress callback (done, total) that writes `label: done/total` on stderr, only when
    the work is larger than `every` (a short run stays quiet)."""

    def report(done: int, total: int) -> None:
        if total > every:
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report
