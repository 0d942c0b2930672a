"""The catcher's aiosmtpd handler: every sender and recipient accepted (up to MAX_RECIPIENTS),
each message stored in the Maildir, and one line printed for it.

The line is `<UTC time> from=<sender> to=<recipients> subject="<subject>" size=<bytes>
file=<path>`, with every character a peer chose that a terminal could act on (escape sequences,
line breaks, bidirectional controls) escaped as Python does (`\\x1b`), so a crafted message
can neither forge a line nor drive the terminal.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email import policy
from email.errors import MessageError
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from tasks.catcher.maildir import Maildir
from workers.model.reply import printable

MAX_RECIPIENTS = 1000  # per message; RFC 5321 §4.5.3.1.8 asks for 100 at least
_SHOWN_RECIPIENTS = 3
_SHOWN_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Printer = Callable[[str], None]


class CatcherHandler:
    """Stores what aiosmtpd hands over in `maildir` and reports each message to `say`."""

    def __init__(self, maildir: Maildir, say: Printer) -> None:
        self._maildir = maildir
        self._say = say

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        sender = str(envelope.mail_from or "")
        recipients = [str(r) for r in envelope.rcpt_tos]
        content = _with_envelope(sender, recipients, data)
        try:
            # fsync is a blocking call: off the loop, so other connections keep being served.
            path = await asyncio.get_running_loop().run_in_executor(
                None, self._maildir.add, content
            )
        except OSError as exc:
            self._say(f"{_now()} could not store a message: {printable(str(exc))}")
            return "451 4.3.0 Could not store the message; try again"
        self._say(summary(sender, recipients, data, path))
        return "250 2.0.0 Caught"


def summary(sender: str, recipients: Sequence[str], data: bytes, path: Path) -> str:
    """The one line printed for a caught message (peer-chosen text escaped)."""
    shown = ",".join(_shown(r) for r in recipients[:_SHOWN_RECIPIENTS])
    if len(recipients) > _SHOWN_RECIPIENTS:
        shown += f" (+{len(recipients) - _SHOWN_RECIPIENTS} more)"
    subject = _shown(subject_of(data)).replace('"', '\\"')
    return (
        f'{_now()} from=<{_shown(sender)}> to={shown or "-"} subject="{subject}"'
        f" size={len(data)} file={path.parent.name}/{path.name}"
    )


def subject_of(data: bytes) -> str:
    """The decoded Subject of a message, "" when it has none or it cannot be read."""
    try:
        headers = BytesHeaderParser(policy=policy.default).parsebytes(data, headersonly=True)
        return str(headers.get("subject", ""))
    except (MessageError, ValueError, TypeError, IndexError, LookupError):
        return ""


def _with_envelope(sender: str, recipients: Sequence[str], data: bytes) -> bytes:
    """The message as a Maildir file: Return-Path and Delivered-To first (as a local delivery
    agent writes them, so a mail client shows the envelope), LF line ends."""
    lines = [f"Return-Path: <{_header_safe(sender)}>"]
    lines += [f"Delivered-To: {_header_safe(r)}" for r in recipients]
    head = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    return head + data.replace(b"\r\n", b"\n")


def _header_safe(text: str) -> str:
    return _CONTROL.sub("?", text)


def _shown(text: str) -> str:
    return printable(text, _SHOWN_CHARS)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
