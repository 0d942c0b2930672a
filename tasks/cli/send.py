"""`mailroom send`: enqueue one notification from the command line and print its id."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import redis

from settings import Settings
from tasks.api import Mailroom
from tasks.cli.errors import FAILED, OK, UsageError, one_line
from tasks.notification import InvalidNotification


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("send", help="enqueue one notification; prints its id")
    parser.add_argument("--from", dest="sender", required=True, help="sender address")
    parser.add_argument("--to", action="append", default=[], help="recipient (repeatable)")
    parser.add_argument("--cc", action="append", default=[], help="copy (repeatable)")
    parser.add_argument("--bcc", action="append", default=[], help="blind copy (repeatable)")
    parser.add_argument("--subject", required=True)
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--text", help="plain-text body")
    body.add_argument("--text-file", type=Path, help="file holding the plain-text body (UTF-8)")
    parser.add_argument("--html", help="HTML body (sent as multipart/alternative)")
    parser.add_argument(
        "--header", action="append", default=[], help="extra header 'Name: value' (repeatable)"
    )
    parser.add_argument("--idempotency-key", help="the same key returns the same id")
    parser.add_argument("--json", action="store_true", help='print {"id": ...}')
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    fields = {
        "sender": args.sender,
        "to": args.to,
        "cc": args.cc,
        "bcc": args.bcc,
        "subject": args.subject,
        "text": _text(args),
        "html": args.html,
        "headers": dict(_header(h) for h in args.header),
        "idempotency_key": args.idempotency_key,
    }
    try:
        message_id = Mailroom(settings).notify(**fields)
    except InvalidNotification as exc:
        raise UsageError(str(exc)) from exc
    except redis.RedisError as exc:
        print(f"mailroom: send: Redis is unavailable: {one_line(str(exc))}", file=sys.stderr)
        return FAILED
    print(json.dumps({"id": message_id}) if args.json else message_id)
    return OK


def _text(args: argparse.Namespace) -> str:
    if args.text_file is None:
        return str(args.text)
    try:
        return str(args.text_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"send: --text-file: cannot read {args.text_file}: {exc}") from exc


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"send: --header: {text!r} is not 'Name: value'")
    return name.strip(), value.strip()
