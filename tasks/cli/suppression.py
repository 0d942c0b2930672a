"""`mailroom suppression list|add|remove|import|export`: the addresses never sent to again."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from settings import Settings
from tasks.cli.errors import FAILED, OK, UsageError, positive_int
from tasks.cli.redis_access import connect
from tasks.cli.wording import counted, table
from tasks.suppression_lines import Listed, checked, parse_lines, shown
from workers.model.reply import printable
from workers.queue.suppression import Entry, SuppressionList, expiry

_CHUNK = 1000  # entries per write of an import
_DEFAULT_LIMIT = 1000


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "suppression", help="the suppression list: addresses never sent to again"
    )
    actions = parser.add_subparsers(dest="suppression_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the listed addresses, with why and since when")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.add_argument(
        "--limit", type=positive_int, default=_DEFAULT_LIMIT, help="at most N (default 1000)"
    )
    add = actions.add_parser("add", help="list addresses (an operator's decision)")
    add.add_argument("addresses", nargs="+", metavar="ADDRESS", help="bare addresses, a@b")
    add.add_argument("--reason", default="added by an operator", help="why (shown in status)")
    remove = actions.add_parser("remove", help="take addresses off the list")
    remove.add_argument("addresses", nargs="+", metavar="ADDRESS", help="bare addresses, a@b")
    load = actions.add_parser("import", help="list every address of a file (- for stdin)")
    load.add_argument("file", help="lines of address, address,reason or JSON (as export writes)")
    load.add_argument("--reason", default="imported", help="for lines without a reason")
    dump = actions.add_parser("export", help="every entry as JSON lines")
    dump.add_argument("file", nargs="?", default="-", help="where to write (default: stdout)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    action: str = args.suppression_action
    if action in {"add", "import"}:
        # Everything is checked before Redis is touched: bad input lists nothing.
        if action == "add":
            listed = _arguments(args, args.reason)
        else:
            listed = _read_file(args.file, args.reason)
        source = "operator" if action == "add" else "import"
        _add(SuppressionList(connect(settings)), listed, source, settings.suppression_ttl)
        print(f"listed {counted(len(listed), 'address')}")
        return OK
    if action == "remove":
        addresses = [listed.address for listed in _arguments(args, "")]
        removed = SuppressionList(connect(settings)).remove(addresses)
        print(f"removed {counted(len(removed), 'address')}")
        for address in addresses:
            if address not in removed:
                print(f"mailroom: {printable(address)} is not on the list", file=sys.stderr)
        return OK if len(removed) == len(set(addresses)) else FAILED
    entries = SuppressionList(connect(settings)).entries(time.time())
    if action == "export":
        return _export(entries, args.file)
    first = [entry for _, entry in zip(range(args.limit), entries, strict=False)]
    if args.json:
        print(json.dumps([shown(entry) for entry in first]))
    else:
        rows = [_row(entry) for entry in first]
        print("\n".join(table(("ADDRESS", "SINCE", "SOURCE", "EXPIRES", "REASON"), rows)))
    return OK


def _arguments(args: argparse.Namespace, reason: str) -> list[Listed]:
    try:
        return [checked(a, reason, f"address {n}") for n, a in enumerate(args.addresses, 1)]
    except ValueError as exc:
        raise UsageError(f"suppression {args.suppression_action}: {exc}") from None


def _read_file(name: str, reason: str) -> list[Listed]:
    try:
        if name == "-":
            return parse_lines(sys.stdin, reason)
        with Path(name).open(encoding="utf-8", errors="strict") as file:
            return parse_lines(file, reason)
    except OSError as exc:
        raise UsageError(f"suppression import: {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"suppression import: {name}: not UTF-8 text") from None
    except ValueError as exc:
        raise UsageError(f"suppression import: {name}: {exc}") from None


def _add(target: SuppressionList, listed: list[Listed], source: str, ttl: int | None) -> None:
    now = time.time()
    entries = [Entry(i.address, i.reason, source, now, expiry(now, ttl)) for i in listed]
    for start in range(0, len(entries), _CHUNK):
        target.add(entries[start : start + _CHUNK])


def _export(entries: Iterator[Entry], name: str) -> int:
    if name == "-":
        count = _write(entries, sys.stdout)
    else:
        try:
            with Path(name).open("x", encoding="utf-8") as file:  # never overwrite a file
                count = _write(entries, file)
        except OSError as exc:
            raise UsageError(f"suppression export: {name}: {exc.strerror or exc}") from None
    print(f"exported {counted(count, 'address')}", file=sys.stderr)
    return OK


def _write(entries: Iterator[Entry], out: TextIO) -> int:
    count = 0
    for entry in entries:
        out.write(json.dumps(shown(entry), ensure_ascii=False) + "\n")
        count += 1
    return count


def _row(entry: Entry) -> tuple[str, ...]:
    data = shown(entry)  # `table` escapes every cell
    return (entry.address, data["since"], entry.source, data["expires"] or "never", entry.reason)
