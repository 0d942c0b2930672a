"""`mailroom dlq list|show|replay|purge`: inspect and repair the dead-letter queue."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from settings import Settings
from tasks.api import Mailroom
from tasks.cli.errors import FAILED, OK, UsageError
from tasks.cli.redis_access import connect, not_found
from tasks.cli.wording import counted
from workers.model.reply import printable
from workers.queue.dead_letters import DeadLetters
from workers.queue.retention import retention


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("dlq", help="inspect and repair the dead-letter queue")
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every dead delivery, newest first")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    show = actions.add_parser("show", help="the dead deliveries of one message")
    show.add_argument("id", help="the message id")
    show.add_argument("--json", action="store_true", help="print a JSON list")
    for name, text in (("replay", "deliver again with a fresh age"), ("purge", "forget them")):
        action = actions.add_parser(name, help=f"{text}: message ids, or --all")
        action.add_argument("ids", nargs="*", metavar="ID", help="message ids")
        action.add_argument(
            "--all", action="store_true", help="every message of the newest 1000 dead letters"
        )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = connect(settings)
    dead = DeadLetters(client, retention(settings).dead_letters)
    action: str = args.dlq_action
    if action == "list":
        entries = dead.list()
        print(json.dumps(entries) if args.json else "\n".join(_line(e) for e in entries))
        return OK
    if action == "show":
        entries = dead.show(args.id)
        if not entries:
            what = f"dlq show: no dead letter for message {args.id!r}"
            print(f"mailroom: {not_found(client, settings, what)}", file=sys.stderr)
            return FAILED
        print(json.dumps(entries, indent=2) if args.json else "\n".join(map(_line, entries)))
        return OK
    if bool(args.ids) == bool(args.all):
        raise UsageError(f"dlq {action}: give message ids or --all, not both or neither")
    ids = [str(e["message_id"]) for e in dead.list()] if args.all else list(args.ids)
    # Checked first: an id with no dead letter is a mistake to report, not a silent 0.
    unknown = [i for i in dict.fromkeys(ids) if not args.all and not dead.show(i)]
    known = [i for i in ids if i not in unknown]
    if action == "replay":
        count = _replay_with_progress(Mailroom(settings), known)
        print(f"replayed {counted(count, 'delivery')}")
    else:
        purged = sum(dead.purge(message_id) for message_id in known)
        print(f"purged {counted(purged, 'dead letter')}")
    for message_id in unknown:
        what = f"dlq {action}: no dead letter for message {message_id!r}"
        print(f"mailroom: {not_found(client, settings, what)}", file=sys.stderr)
    return FAILED if unknown else OK


_PROGRESS_EVERY = 200  # messages between progress lines on stderr


def _replay_with_progress(mailroom: Mailroom, ids: list[str]) -> int:
    """Replay `ids` in chunks, telling stderr how far it got when there are many."""
    count = 0
    for start in range(0, len(ids), _PROGRESS_EVERY):
        count += mailroom.replay(ids[start : start + _PROGRESS_EVERY])
        if len(ids) > _PROGRESS_EVERY:
            done = min(start + _PROGRESS_EVERY, len(ids))
            done_text = f"{done}/{len(ids)} messages, {counted(count, 'delivery')}"
            print(f"dlq replay: {done_text}", file=sys.stderr)
    return count


def _line(entry: dict[str, Any]) -> str:
    first = entry["recipients"][0] if entry["recipients"] else {}
    reply = " ".join(str(first.get(k, "")) for k in ("code", "enhanced", "reply")).strip()
    count = len(entry["recipients"])
    where = f"{entry['message_id']}  {entry['destination']}"
    return printable(
        f"{entry['at']}  {where}  {entry['reason']}  {counted(count, 'recipient')}  {reply}"
    )
