"""What the cluster's gate answers, and which receiver replies ask for less.

The SMTP client needs `is_throttling` to end a session a server asked to slow down, and the
connection pool needs `Granted`/`Throttled`: here, so neither imports the Redis limiter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from workers.model.reply import Code

_FOUR_SEVEN_THROTTLING = (Code.MAILBOX_BUSY, Code.LOCAL_ERROR, Code.INSUFFICIENT_STORAGE)
# RFC 3463 network and TLS failures: what Mailroom says about a refused, dropped or timed-out
# connection (workers.model.reply), never a server asking for less.
_CONNECTION_FAILURES = frozenset({"4.4.1", "4.4.2", "4.4.7", "4.7.5"})
_GREYLISTING = re.compile(r"gr[ae]y[- ]?list", re.IGNORECASE)
# How Postfix (anvil), Exchange Online, Gmail and Yahoo word a volume throttle.
_VOLUME = re.compile(
    r"too many|\brate\b|busy|throttl|limit|volume|slow down|congest|overload|exceeded",
    re.IGNORECASE,
)


class ThrottleReason(StrEnum):
    """Which limit said "not yet"."""

    RATE = "rate"  # the destination's configured rate
    SLOWDOWN = "slowdown"  # the destination's slow-down after a receiver's throttling reply
    CONNECTIONS = "connections"  # the destination's connection cap is full


@dataclass(frozen=True, slots=True)
class Granted:
    """Go ahead; `lease` is the connection lease to release after the session (None: uncapped)."""

    lease: str | None


@dataclass(frozen=True, slots=True)
class Throttled:
    """Not now: try again in `retry_after` seconds; nothing is held except a rate reservation."""

    retry_after: float
    reason: ThrottleReason
    cause: str = ""  # SLOWDOWN: the reply that caused it, e.g. "421 4.7.0"

    def held_by(self, destination: str) -> str:
        """What holds a delivery to `destination` back, named for what it is."""
        if self.reason is ThrottleReason.SLOWDOWN:
            return f"slowed down after {self.cause or 'a throttling reply'} from {destination}"
        return f"{self.reason.value} limit of {destination}"


def is_throttling(code: int, enhanced: str, text: str = "") -> bool:
    """Whether a receiver's reply asks Mailroom to send less to the whole destination (a reason
    to `penalize`, and to end the session rather than keep it).

    Server-wide signals only: 421 (the server closes the session) unless its enhanced code
    names a network or TLS failure (X.4.1, X.4.2, X.4.7, X.7.5: Mailroom's own replies for a
    refused, dropped, timed-out or failed connection); any 4xx with 4.3.2 ("system not
    accepting network messages", Microsoft's 432 4.3.2 concurrency throttling); and 450, 451 or
    452 with a X.7.x policy code whose text speaks of volume ("too many", "rate", "busy",
    "throttled", "limit" ...). Greylisting (451 4.7.1 to one RCPT) and other replies about one
    recipient or one message defer that recipient only.
    """
    if code == Code.SERVICE_UNAVAILABLE:
        return enhanced not in _CONNECTION_FAILURES
    if code // 100 == 4 and enhanced == "4.3.2":
        return True
    if code in _FOUR_SEVEN_THROTTLING and enhanced.startswith("4.7."):
        return not _GREYLISTING.search(text) and bool(_VOLUME.search(text))
    return False
