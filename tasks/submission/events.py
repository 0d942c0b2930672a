"""What the listener knows and logs of a session: the client's IP, the account it logged in as,
and one JSON line per event (never an address, a password or message content)."""

from __future__ import annotations

import json
import logging
from typing import Any

from aiosmtpd.smtp import SMTP, Session

from tasks.submission.accounts import Account

log = logging.getLogger("mailroom.submission")


def account_of(session: Session) -> Account | None:
    """The account the session authenticated as, if it did."""
    data: object = session.auth_data  # typed None by aiosmtpd; it holds what AuthResult carried
    return data if session.authenticated and isinstance(data, Account) else None


def peer_ip(server: SMTP) -> str:
    """The client's IP address, or "unknown"."""
    peer: Any = server.session.peer if server.session is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def event(event: str, **fields: object) -> None:
    """One JSON line per event; never an address, a password or message content."""
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"event": event, **fields}, separators=(",", ":")))
