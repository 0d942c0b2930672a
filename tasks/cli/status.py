"""`mailroom status ID [--json]`: a message's state, its recipients, and every attempt's steps.

The human form is for an operator reading one message: a header line (id, state, age, subject),
a table of recipients (a deferred one with why and when it is tried next, a throttled one saying
so), then each attempt as a table of its steps, RCPT rows naming their recipient and a reused
connection's first step shown as the RSET it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from settings import Settings
from tasks.cli.errors import FAILED, OK
from tasks.cli.redis_access import connect, not_found
from tasks.cli.wording import age, table
from workers.model.reply import printable
from workers.queue.retention import retention
from workers.queue.status import StatusStore

_RECIPIENTS = ("RECIPIENT", "DESTINATION", "STATE", "LAST REPLY")
_STEPS = ("STEP", "COMMAND", "REPLY", "MS", "TEXT")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("status", help="a message's state and its delivery attempts")
    parser.add_argument("id", help="the message id that notify/send returned")
    parser.add_argument("--json", action="store_true", help="print the status record as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = connect(settings)
    view = StatusStore(client, retention(settings).status).view(args.id)
    if view is None:
        what = f"status: no message with id {args.id!r}"
        print(f"mailroom: {not_found(client, settings, what)}", file=sys.stderr)
        return FAILED
    print(json.dumps(view, indent=2) if args.json else "\n".join(as_lines(view, time.time())))
    return OK


def as_lines(view: dict[str, Any], now: float) -> list[str]:
    """The status record for people. Every text from the record is escaped (`printable`, in
    `table` too): a server's reply may hold terminal escape sequences."""
    subject = view.get("subject")
    shown = "(content expired)" if subject is None else repr(subject)
    created = view.get("created")
    queued = f"queued {age(now - _unix(created))} ago" if created else ""
    lines = [printable("  ".join(p for p in (view["id"], view["state"], queued) if p))]
    lines.append(printable(f"subject: {shown}"))
    rows = [(r["address"], r["destination"], r["state"], _last(r, now)) for r in view["recipients"]]
    lines += ["", *table(_RECIPIENTS, rows)]
    for number, attempt in enumerate(view["attempts"], start=1):
        server = attempt["host"] or "-"
        if attempt.get("address"):
            server += f" [{attempt['address']}]"
        lines += [
            "",
            printable(f"attempt {number}  {attempt['at']}  {attempt['destination']}  {server}"),
        ]
        lines += ["  " + line for line in table(_STEPS, [_step(s) for s in attempt["steps"]])]
    return lines


def _last(recipient: dict[str, Any], now: float) -> str:
    parts = (recipient.get("code"), recipient.get("enhanced"), recipient.get("reply"))
    reply = " ".join(str(p) for p in parts if p) or "-"
    throttled = recipient.get("throttled")
    if throttled and throttled != recipient.get("reply"):  # held back after a server's reply
        reply += f"; {throttled}"
    if recipient.get("next_attempt"):
        due = _unix(recipient["next_attempt"])
        when = "now" if due <= now else f"in {age(due - now)}"
        reply += f"; next attempt {recipient['next_attempt']} ({when})"
    if recipient.get("deleted"):
        reply += f"; {recipient['deleted']}"
    return reply


def _step(step: dict[str, Any]) -> list[object]:
    command = str(step.get("command") or "")
    name = "RSET" if command == "RSET" else step["step"]  # a reused connection's first step
    if step.get("recipient"):
        command += f" {step['recipient']}"
    reply = f"{step['code']} {step['enhanced'] or ''}".strip()
    return [name, command or "-", reply, f"{step['ms']:.1f}", step["text"]]


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
