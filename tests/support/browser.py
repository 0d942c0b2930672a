"""Headless Chromium for tests: a page's DOM after its scripts ran, and a screenshot of it.

Debian's `chromium` is driven from its command line (no chromedriver, no DevTools client):
`render(url, png)` prints the DOM (`--dump-dom`) once the page and its XHRs settled within a
virtual-time budget, and renders the same page to a PNG (`--screenshot`) in the same run.
Every run gets a fresh profile directory, and the flags keep Chromium off the network (no
background requests, component updates, sync or QUIC), so it only talks to the loopback page
it is given; `--no-sandbox` because tests run as root. A missing binary is a failure, never
a skip: `scripts/setup` installs Debian's chromium.

`tables(dom)` reads the page's tables as text, keyed by id, for assertions on what a user sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
_BUDGET_MS = 5000  # virtual time: page scripts, timers and XHRs; real time is far less
_RUN_TIMEOUT = 60.0
WINDOW = (1600, 900)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ChromiumMissingError(RuntimeError):
    """chromium is not installed: run the project's setup script (Debian's chromium)."""


def find_chromium() -> str:
    """The chromium executable; raises `ChromiumMissingError` when it is not installed."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"])
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name, path=search)
        if found is not None:
            return found
    raise ChromiumMissingError("chromium not found (looked in PATH and /usr/bin)")


def _run(url: str, *args: str, budget_ms: int) -> str:
    """Run headless chromium on `url` with `args` in a fresh profile; returns its stdout.

    :raises AssertionError: when chromium exits with an error (its stderr tail says why).
    """
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        argv = [find_chromium(), *_FLAGS, f"--user-data-dir={profile}"]
        argv += [f"--virtual-time-budget={budget_ms}", *args, url]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_RUN_TIMEOUT, check=False
        )
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode} on {url}: {done.stderr[-2000:]}")
    return done.stdout


def render(
    url: str,
    png: Path | None = None,
    *,
    budget_ms: int = _BUDGET_MS,
    window: tuple[int, int] = WINDOW,
) -> str:
    """The serialized DOM of `url` once its scripts and requests ran for `budget_ms` (virtual).

    With `png`, the page is also rendered to that file (parents created) in a `window`-sized
    viewport, in the same run.

    :raises AssertionError: when chromium fails, or writes no PNG when asked for one.
    """
    args = ["--dump-dom"]
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        png.unlink(missing_ok=True)
        width, height = window
        args += [f"--window-size={width},{height}", f"--screenshot={png}"]
    dom = _run(url, *args, budget_ms=budget_ms)
    if png is not None and not (png.is_file() and png.read_bytes().startswith(_PNG_SIGNATURE)):
        raise AssertionError(f"chromium wrote no PNG to {png}")
    return dom


@dataclass
class Table:
    """One HTML table as text: header labels (a `data-column` slug if present) and body rows."""

    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    def records(self) -> list[dict[str, str]]:
        """Each body row as {header: cell text}."""
        return [dict(zip(self.headers, row, strict=False)) for row in self.rows]


class _TableParser(HTMLParser):
    """Collects the text of every `<table id=...>`'s header and body cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, Table] = {}
        self._table: Table | None = None
        self._section = ""
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._slug: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("id"):
            # DataTables' fixed header is a second, id-less table: the id'd one is the data.
            self._table = self.tables.setdefault(str(attributes["id"]), Table())
        elif self._table is None:
            return
        elif tag in ("thead", "tbody"):
            self._section = tag
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._slug = attributes.get("data-column")

    def handle_endtag(self, tag: str) -> None:
        table = self._table
        if table is None:
            return
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            text = " ".join("".join(self._cell).split())
            self._row.append((self._slug or text) if self._section == "thead" else text)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._section == "thead" and not table.headers:
                table.headers = self._row
            elif self._section == "tbody":
                table.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(dom: str) -> dict[str, Table]:
    """Every table of `dom` that has an id, as text."""
    parser = _TableParser()
    parser.feed(dom)
    parser.close()
    return parser.tables
