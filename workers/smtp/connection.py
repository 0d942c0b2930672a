"""One open SMTP connection, and the key it is parked and reused under."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiosmtplib import SMTP
from aiosmtplib.errors import SMTPException

from workers.smtp.wire import Wire

_QUIT_TIMEOUT = 2.0  # a parked connection's QUIT is a courtesy: never wait long for it


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What a parked connection can be reused for: the same server, TLS and account."""

    destination: str  # what the connection delivers for: a domain, or "relay"
    host: str
    address: str
    port: int
    tls: str | None  # the TlsPolicy's identity, None = plaintext
    account: str | None  # the AUTH user name, None = no AUTH


@dataclass(eq=False, slots=True)
class Connection:
    """One open, greeted (and, where asked, TLS-protected and authenticated) SMTP connection.

    aiosmtplib's `smtp` opened it and keeps what EHLO announced; once open, its `wire` carries
    every transaction.
    """

    smtp: SMTP
    transport: asyncio.Transport | None  # the TLS transport, aborted on close
    tls_active: bool
    opened: float  # event-loop time
    transactions: int = 0
    lease: str | None = None  # the cap lease it was opened under, held until closed (pool's)
    closed: bool = False
    wire: Wire | None = None  # set once the session is open
    pipelining: bool = False  # the server announced PIPELINING (RFC 2920)

    @property
    def usable(self) -> bool:
        if self.closed:
            return False
        return self.wire.usable if self.wire is not None else self.smtp.is_connected

    def close(self) -> None:
        """Drop the connection at once (no QUIT): nothing more is owed to the server."""
        if self.wire is not None:
            self.wire.abort("closed")
        self.smtp.close()
        # A graceful TLS shutdown would hold the socket for up to ssl_shutdown_timeout.
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    async def quit(self) -> None:
        """QUIT politely, briefly, then close whatever the server did."""
        if self.wire is not None:
            if self.wire.usable:
                await self.wire.quit(_QUIT_TIMEOUT)
        else:
            with contextlib.suppress(SMTPException, OSError, TimeoutError):
                if self.smtp.is_connected:
                    await asyncio.wait_for(self.smtp.quit(), _QUIT_TIMEOUT)
        self.close()
