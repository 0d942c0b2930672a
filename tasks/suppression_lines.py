"""The line formats of `mailroom suppression import` and `export`.

Export writes one JSON object per line, as `--json` shows entries. Import reads, per line, such an
object (its "address" and "reason"), or `address` or `address,reason` (a CSV row, so lists from
other systems import as they are); blank lines and lines starting with `#` are skipped. Every
line is checked before anything is written: the first bad one is one line naming it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tasks.addresses import parse_mailbox
from tasks.header_text import InvalidNotification
from workers.queue.suppression import Entry

MAX_REASON = 500  # characters of a reason kept
MAX_LINE = 2000  # characters of an import line
MAX_LINES = 1_000_000  # lines of one import


@dataclass(frozen=True, slots=True)
class Listed:
    """One address to list, and why."""

    address: str
    reason: str


def checked(address: str, reason: str, where: str) -> Listed:
    """A validated address (as the status records hold it) and a reason fit to show.

    :raises ValueError: one line naming `where` and what is wrong.
    """
    try:
        mailbox = parse_mailbox(where, address.strip())
    except InvalidNotification as exc:
        raise ValueError(str(exc)) from None
    if mailbox.display_name:
        raise ValueError(f"{where}: give the bare address, without a display name")
    text = " ".join(reason.split())
    if not text.isprintable():
        raise ValueError(f"{where}: the reason holds control characters")
    return Listed(mailbox.address, text[:MAX_REASON])


def parse_lines(lines: Iterable[str], default_reason: str) -> list[Listed]:
    """Every address an import file lists, in order.

    :raises ValueError: the first bad line, by number; nothing is returned then.
    """
    found = []
    for number, raw in enumerate(lines, start=1):
        if number > MAX_LINES:
            raise ValueError(f"more than {MAX_LINES} lines; split the file")
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        if len(line) > MAX_LINE:
            raise ValueError(f"{where}: longer than {MAX_LINE} characters")
        address, reason = _fields(line, where)
        found.append(checked(address, reason or default_reason, where))
    return found


def _fields(line: str, where: str) -> tuple[str, str]:
    if line.startswith("{"):
        try:
            value: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict) or not isinstance(value.get("address"), str):
            raise ValueError(f'{where}: a JSON line needs "address" as a string')
        reason = value.get("reason", "")
        return value["address"], reason if isinstance(reason, str) else ""
    try:
        row = next(csv.reader([line]))
    except csv.Error as exc:
        raise ValueError(f"{where}: not a CSV row ({exc})") from None
    if len(row) > 2:
        raise ValueError(f"{where}: expected address or address,reason")
    return row[0], row[1] if len(row) == 2 else ""


def shown(entry: Entry) -> dict[str, Any]:
    """An entry as `--json` and export show it: times as ISO-8601 (UTC)."""
    return {
        "address": entry.address,
        "reason": entry.reason,
        "source": entry.source,
        "since": _iso(entry.since),
        "expires": None if entry.expires is None else _iso(entry.expires),
        "code": entry.code,
        "enhanced": entry.enhanced,
        "message_id": entry.message_id,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
