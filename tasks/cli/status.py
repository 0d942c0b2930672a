"""`mailroom status ID [--json]`: a message's state, its recipients, and every attempt's steps."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from settings import Settings
from tasks.cli.errors import FAILED, OK
from workers.model.reply import printable
from workers.queue.redis_client import redis_client
from workers.queue.retention import retention
from workers.queue.status import StatusStore


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("status", help="a message's state and its delivery attempts")
    parser.add_argument("id", help="the message id that notify/send returned")
    parser.add_argument("--json", action="store_true", help="print the status record as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    store = StatusStore(
        redis_client(settings.redis_url, settings.redis_timeout), retention(settings).status
    )
    view = store.view(args.id)
    if view is None:
        print(f"mailroom: status: no message with id {args.id!r}", file=sys.stderr)
        return FAILED
    print(json.dumps(view, indent=2) if args.json else "\n".join(as_lines(view)))
    return OK


def as_lines(view: dict[str, Any]) -> list[str]:
    """The status record for people: recipients first, then each attempt's steps.

    Every text from the record is escaped (`printable`): a server's reply may hold terminal
    escape sequences, and a record may predate the workers escaping them.
    """
    lines = [f"{view['id']}  {view['state']}"]
    for r in view["recipients"]:
        reply = " ".join(str(p) for p in (r.get("code"), r.get("enhanced"), r.get("reply")) if p)
        # A delivery the gate held back says why (when its last reply is a server's) and when.
        if r.get("throttled") and r["throttled"] != r.get("reply"):
            reply += f"; held back: {r['throttled']}"
        if r.get("next_attempt"):
            reply += f"; next attempt {r['next_attempt']}"
        lines.append(f"  {_shown(r['address']):<40} {r['state']:<10} {_shown(reply)}")
    for attempt in view["attempts"]:
        where = f"{_shown(attempt['destination'])}  {_shown(attempt['host'])}"
        lines.append(f"attempt {attempt['at']}  {where}")
        for s in attempt["steps"]:
            code = f"{s['code']} {_shown(s['enhanced'] or '-'):<7}"
            lines.append(f"  {s['step']:<13} {code} {s['ms']:>8.1f} ms  {_shown(s['text'])}")
    return lines


def _shown(value: object) -> str:
    return printable(str(value))
