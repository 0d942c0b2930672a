"""`mailroom send`: enqueue one notification from the command line and print its id."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from settings import Settings
from tasks.api import Mailroom
from tasks.cli.errors import OK, UsageError
from tasks.notification import InvalidNotification


def register(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser("send", help="enqueue one notification; prints its id")
    parser.add_argument("--from", dest="sender", required=True, help="sender address")
    parser.add_argument("--to", action="append", default=[], help="recipient (repeatable)")
    parser.add_argument("--cc", action="append", default=[], help="copy (repeatable)")
    parser.add_argument("--bcc", action="append", default=[], help="blind copy (repeatable)")
    parser.add_argument("--subject", required=True, help="the subject line")
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--text", help="plain-text body")
    body.add_argument("--text-file", type=Path, help="file holding the plain-text body (UTF-8)")
    parser.add_argument("--html", help="HTML body (sent as multipart/alternative)")
    parser.add_argument(
        "--header", action="append", default=[], help="extra header 'Name: value' (repeatable)"
    )
    parser.add_argument("--idempotency-key", help="the same key returns the same id")
    parser.add_argument(
        "--reply-to", action="append", default=[], help="Reply-To address (repeatable)"
    )
    parser.add_argument(
        "--attach",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="attach a file; its type is guessed from its name (repeatable)",
    )
    parser.add_argument(
        "--attach-inline",
        action="append",
        default=[],
        metavar="CID=FILE",
        help="an inline part the --html shows as cid:CID (repeatable)",
    )
    parser.add_argument(
        "--tag", action="append", default=[], help="a tag its events carry (repeatable)"
    )
    parser.add_argument(
        "--meta", action="append", default=[], help="metadata 'key=value' its events carry"
    )
    parser.add_argument(
        "--list-unsubscribe",
        action="append",
        default=[],
        metavar="URI",
        help="List-Unsubscribe https: or mailto: URI (one of each at most)",
    )
    parser.add_argument(
        "--one-click",
        action="store_true",
        help="add List-Unsubscribe-Post: List-Unsubscribe=One-Click (needs an https URI)",
    )
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
        "reply_to": args.reply_to,
        "attachments": [*args.attach, *map(_inline, args.attach_inline)],
        "tags": args.tag,
        "metadata": dict(_meta(m) for m in args.meta),
        "list_unsubscribe": args.list_unsubscribe or None,
        "one_click": args.one_click,
    }
    try:
        message_id = Mailroom(settings).notify(**fields)
    except InvalidNotification as exc:
        raise UsageError(f"send: {as_flags(str(exc), args)}") from exc
    print(json.dumps({"id": message_id}) if args.json else message_id)
    return OK


# The notification's fields as the options that set them, so an error names what was typed.
_FLAGS = {
    "sender": "--from",
    "to": "--to",
    "cc": "--cc",
    "bcc": "--bcc",
    "subject": "--subject",
    "html": "--html",
    "headers": "--header",
    "idempotency_key": "--idempotency-key",
    "reply_to": "--reply-to",
    "tags": "--tag",
    "metadata": "--meta",
    "list_unsubscribe": "--list-unsubscribe",
    "one_click": "--one-click",
}


def as_flags(message: str, args: argparse.Namespace) -> str:
    """An `InvalidNotification` message with its leading field (`to[1]: …`) as the option
    (`--to: …`)."""
    location, colon, problem = message.partition(": ")
    field = location.partition("[")[0]
    flag = _FLAGS.get(field)
    if field == "text":
        flag = "--text" if args.text_file is None else "--text-file"
    elif field == "attachments":
        flag, key = _attachment_flag(location, args)
        if key:
            problem = f"{key}: {problem}"
    if flag is None or not colon:
        return message
    return f"{flag}: {problem}"


def _attachment_flag(location: str, args: argparse.Namespace) -> tuple[str | None, str]:
    """The option behind `attachments[N]…` (the --attach files come first), and the key."""
    index, _, key = location.removeprefix("attachments[").partition("]")
    if not index.isdigit():
        return None, ""
    flag = "--attach" if int(index) < len(args.attach) else "--attach-inline"
    key = key.removeprefix(".")
    return flag, "" if key == "content" else key  # the content is the FILE the option names


def _text(args: argparse.Namespace) -> str:
    if args.text_file is None:
        return str(args.text)
    try:
        return str(args.text_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"send: --text-file: cannot read {args.text_file}: {exc}") from exc


def _inline(text: str) -> dict[str, Any]:
    content_id, equals, path = text.partition("=")
    if not equals or not content_id or not path:
        raise UsageError(f"send: --attach-inline: {text!r} is not CID=FILE")
    return {"content": Path(path), "inline": True, "content_id": content_id}


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"send: --header: {text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def _meta(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise UsageError(f"send: --meta: {text!r} is not 'key=value'")
    return key, value
