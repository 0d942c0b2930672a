"""What a session is given: the server to talk to (`Peer`) and what one conversation carries
(`Errand`), each built once and never changed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from workers.model.envelope import OutboundMessage
from workers.smtp.connection import Connection, PoolKey
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.record import Timeouts
from workers.smtp.slot import Slot
from workers.smtp.tls_policy import TlsPolicy


@dataclass(frozen=True, slots=True)
class Credentials:
    """The relay's service account; the password is kept out of every repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class BearerCredentials:
    """A mailbox and an OAuth 2.0 access token for AUTH XOAUTH2, fetched by the delivery agent
    before the session (the SMTP client never asks a token endpoint); the token is kept out of
    every repr."""

    username: str
    token: str = field(repr=False)


Login = Credentials | BearerCredentials


@dataclass(frozen=True, slots=True)
class Peer:
    """One address of one server, and how to talk to it.

    `tls` None means plaintext (the retry after a failed opportunistic handshake). Credentials
    are only ever sent inside TLS. `destination` (a domain, or "relay") is what connections to
    it are parked and capped for.
    """

    host: str
    address: str
    port: int
    tls: TlsPolicy | None
    helo: str
    timeouts: Timeouts
    credentials: Login | None = None
    destination: str = ""

    @property
    def key(self) -> PoolKey:
        """What a connection to this peer can be reused for."""
        return PoolKey(
            self.destination,
            self.host,
            self.address,
            self.port,
            None if self.tls is None else self.tls.identity,
            None if self.credentials is None else self.credentials.username,
        )

    def plaintext(self) -> Peer:
        """The same peer without TLS: the retry after a failed opportunistic handshake."""
        return replace(self, tls=None)


@dataclass(frozen=True, slots=True)
class Errand:
    """What one conversation carries: the message, its recipients and its deadline.

    `deadline` is an event-loop time after which the session is abandoned and unfinished
    recipients are deferred. A `probe` stops after RCPT TO (no DATA; `mailroom check`), so each
    accepted recipient's reply is its RCPT reply. With `pool`, a parked connection is reused and
    a healthy one parked afterwards (never for a probe). `slot` is the delivery's right to a
    connection (`workers.smtp.connection_pool`): a connection opened here takes its lease, one
    dropped gives it back; it must hold one unless a parked connection is used. Without it the
    session uses (and empties) a slot of its own, as an uncapped destination's. `connection` is
    one the caller already took from `pool`.
    """

    message: OutboundMessage
    recipients: Sequence[str]
    deadline: float
    probe: bool = False
    pool: ConnectionPool | None = None
    slot: Slot | None = None
    connection: Connection | None = None
