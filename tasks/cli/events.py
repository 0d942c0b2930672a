"""`mailroom events [--follow] [--type T] [--since …] [--limit N] [--json]`: the delivery event log
(`workers.queue.events`) read from a terminal.

Events carry recipient addresses by design (a producer needs them); every field a server or a
producer wrote is escaped on the human lines.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from settings import Settings
from tasks.cli.errors import OK, UsageError, positive_int
from tasks.cli.redis_access import connect
from workers.model.reply import printable
from workers.queue.events import TYPES, EventLog

_EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_PAGE = 500
_DEFAULT_LIMIT = 1000
_MOST_SEQUENCE = 2**64 - 1  # an entry id's sequence part is a 64-bit number
_MOST_BLOCK = 5.0  # seconds one wait for new events lasts, at most


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("events", help="the delivery event log, oldest first")
    parser.add_argument(
        "--follow", "-f", action="store_true", help="then wait for new events until Ctrl-C"
    )
    parser.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="TYPE",
        help=f"only these types (repeatable or comma-separated): {', '.join(TYPES)}",
    )
    parser.add_argument("--since", help="after this event id, or from this ISO-8601 time")
    parser.add_argument(
        "--limit", type=positive_int, default=_DEFAULT_LIMIT, help="most events before --follow"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    types = _types(args.type)
    after = _start(args.since)
    log = EventLog(connect(settings))
    shown = 0
    while shown < args.limit:
        page = log.page(after, min(_PAGE, args.limit - shown))
        if not page:
            break
        after = page[-1]["event_id"]
        shown += _print(page, types, args.json)
    if not args.follow:
        return OK
    if args.since is None and shown == 0:
        after = log.last_id()
    block = min(_MOST_BLOCK, settings.redis_timeout / 2)
    while True:  # until Ctrl-C, which the CLI turns into exit status 130
        events = log.wait(after, block, _PAGE)
        if events:
            after = events[-1]["event_id"]
            _print(events, types, args.json)


def _types(given: Sequence[str]) -> set[str]:
    types = {t.strip() for item in given for t in item.split(",") if t.strip()}
    unknown = sorted(types - set(TYPES))
    if unknown:
        raise UsageError(f"events: --type: unknown {', '.join(map(repr, unknown))}")
    return types


def _start(since: str | None) -> str:
    """The id the reading starts after."""
    if since is None:
        return "0-0"
    if _EVENT_ID.fullmatch(since):
        return since
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise UsageError(
            f"events: --since: {since[:80]!r} is neither an event id nor an ISO-8601 time"
        ) from None
    if moment.tzinfo is None:
        raise UsageError("events: --since: give the time zone (e.g. 2026-12-06T10:00:00+00:00)")
    # An entry id is milliseconds-sequence: the last id of the millisecond before `moment`.
    milliseconds = int(moment.timestamp() * 1000)
    return f"{milliseconds - 1}-{_MOST_SEQUENCE}" if milliseconds > 0 else "0-0"


def _print(events: Sequence[dict[str, Any]], types: set[str], as_json: bool) -> int:
    """Print the events of `types` (all when empty); returns how many were printed."""
    printed = [event for event in events if not types or event["type"] in types]
    for event in printed:
        print(json.dumps(event, ensure_ascii=False) if as_json else _line(event), flush=True)
    return len(printed)


def _line(event: dict[str, Any]) -> str:
    reply = event["reply"]
    code = " ".join(str(p) for p in (reply["code"], reply["enhanced"], reply["text"]) if p)
    parts = (
        event["timestamp"],
        event["type"],
        event["message_id"],
        event["recipient"],
        event["destination"],
        code,
    )
    return printable("  ".join(str(p) for p in parts if p))
