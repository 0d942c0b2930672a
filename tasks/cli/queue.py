"""`mailroom queue [flush|delete]`: the deferred deliveries, as Postfix's `mailq`, `postqueue -f`
and `postsuper -d` show and change them. Safe while workers run (`workers.queue.deferred_listing`,
`workers.queue.deletion`); long runs say how far they got on stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from settings import Settings
from tasks.cli.errors import FAILED, OK, UsageError
from tasks.cli.redis_access import connect, not_found
from tasks.cli.wording import age, counted, progress, table
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred_listing import PAGE, DeferredListing, QueuedDelivery, Selection
from workers.queue.deletion import Deletion, DeletionPolicy, Outcome
from workers.queue.leases import lease_ttl
from workers.queue.retention import retention

_HEADERS = ("MESSAGE", "DESTINATION", "RCPT", "TRIES", "AGE", "NEXT ATTEMPT", "LAST REPLY")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "queue",
        help="the deferred deliveries (mailq); flush or delete them",
        description="List the deferred deliveries, oldest first (Postfix's mailq). "
        "`queue flush` makes them due now, `queue delete` takes messages out of the queue.",
    )
    _destination(parser, "only deliveries to destination D (a domain, or relay)")
    parser.add_argument(
        "--older-than",
        metavar="S",
        type=_seconds,
        help="only deliveries first queued at least S seconds ago",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    actions = parser.add_subparsers(dest="queue_action", metavar="ACTION")
    flush = actions.add_parser(
        "flush", help="make deferred deliveries due now: all, --destination D, or message ids"
    )
    _destination(flush, "only deliveries to destination D")
    flush.add_argument("ids", nargs="*", metavar="ID", help="only these messages' deliveries")
    delete = actions.add_parser(
        "delete", help="take messages out of the queue, as deleted by operator"
    )
    delete.add_argument("ids", nargs="+", metavar="ID", help="message ids to delete")
    parser.set_defaults(run=run)


def _destination(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--destination", metavar="D", type=str.lower, help=text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def run(args: argparse.Namespace, settings: Settings) -> int:
    action = args.queue_action
    if action == "flush":
        return _flush(args, settings)
    if action == "delete":
        return _delete(args, settings)
    client = connect(settings)
    now = time.time()
    selection = Selection(destination=args.destination, older_than=args.older_than)
    found = DeferredListing(client).deliveries(selection, now, progress("queue", PAGE))
    if args.json:
        print(json.dumps([d.as_json(now) for d in found]))
        return OK
    if not found:
        print("the queue is empty" if selection == Selection() else "no deferred delivery matches")
        return OK
    for line in table(_HEADERS, [_row(d, now) for d in found]):
        print(line)
    waiting = sum(d.recipients for d in found)
    print(f"-- {counted(len(found), 'delivery')} deferred, {counted(waiting, 'recipient')}")
    return OK


def _row(delivery: QueuedDelivery, now: float) -> list[object]:
    parts = (delivery.code, delivery.enhanced, delivery.reply)
    reply = " ".join(str(p) for p in parts if p) or "-"
    if delivery.throttled and delivery.throttled != delivery.reply:
        reply += f"; held back: {delivery.throttled}"
    return [
        delivery.message_id,
        delivery.destination,
        delivery.recipients,
        delivery.attempts,
        age(now - delivery.first_queued),
        _short_time(delivery.due, now),
        reply,
    ]


def _short_time(when: float, now: float) -> str:
    return "now" if when <= now else f"in {age(when - now)}"


def _flush(args: argparse.Namespace, settings: Settings) -> int:
    if args.destination and args.ids:
        raise UsageError("queue flush: give --destination or message ids, not both")
    client = connect(settings)
    ids = frozenset(args.ids)
    selection = Selection(destination=args.destination, message_ids=ids)
    flushed = DeferredListing(client).flush(selection, time.time(), progress("queue flush", PAGE))
    print(f"flushed {counted(len(flushed), 'delivery')}: due now")
    missing = sorted(ids - {entry.message_id for entry in flushed})
    for message_id in missing:
        what = f"queue flush: message {message_id!r} has no deferred delivery"
        print(f"mailroom: {not_found(client, settings, what)}", file=sys.stderr)
    return FAILED if missing else OK


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    client = connect(settings)
    keep = retention(settings)
    hold = lease_ttl(settings.session_timeout, settings.visibility_timeout)
    deletion = Deletion(
        client,
        DeadLetters(client, keep.dead_letters),
        DeletionPolicy(keep.status, hold, settings.events_maxlen),
    )
    ids = list(dict.fromkeys(args.ids))
    report = progress("queue delete", PAGE)
    deliveries = recipients = 0
    problems: list[str] = []
    for done, message_id in enumerate(ids, start=1):
        results = deletion.delete(message_id, time.time())
        for result in results:
            if result.outcome is Outcome.DELETED:
                deliveries += 1
                recipients += len(result.recipients)
            elif result.outcome is Outcome.BUSY:
                problems.append(
                    f"queue delete: {message_id} to {result.destination} is being delivered"
                    " right now; not deleted (try again)"
                )
        if results[0].outcome is Outcome.UNKNOWN:
            what = f"queue delete: no message with id {message_id!r}"
            problems.append(not_found(client, settings, what))
        elif all(r.outcome is Outcome.NOTHING for r in results):
            problems.append(f"queue delete: message {message_id!r} has nothing left to deliver")
        if done % PAGE == 0:
            report(done, len(ids))
    print(f"deleted {counted(deliveries, 'delivery')} ({counted(recipients, 'recipient')})")
    for problem in problems:
        print(f"mailroom: {problem}", file=sys.stderr)
    return FAILED if problems else OK
