"""Small helpers for the figures: percentiles, units, the progress line, the JSON object.

The progress line goes to stderr, rewritten in place with "\\r" every half second, so stdout
holds only the result (the table, or exactly one JSON object with --json).
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` (0..1) percentile of `values`, nearest rank; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def mib(kib: float) -> float:
    """KiB → MiB."""
    return kib / 1024


def rounded(value: float | None, digits: int = 3) -> float | None:
    """`value` rounded for JSON; None for NaN or None (JSON has no NaN)."""
    if value is None or math.isnan(value):
        return None
    return round(value, digits)


def emit_json(result: dict[str, Any], stream: TextIO = sys.stdout) -> None:
    """Write `result` as one JSON object on one line."""
    stream.write(json.dumps(result, sort_keys=False) + "\n")
    stream.flush()


class Progress:
    """A status line on stderr refreshed every `every` seconds from `line()`, in a daemon thread."""

    def __init__(self, line: Callable[[], str], every: float = 0.5) -> None:
        self._line = line
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._width = 0

    def start(self) -> Progress:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing, print the line one last time and end it with a newline."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._show()
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _show(self) -> None:
        text = self._line()
        padding = " " * max(0, self._width - len(text))
        self._width = len(text)
        sys.stderr.write("\r" + text + padding)
        sys.stderr.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._show()
