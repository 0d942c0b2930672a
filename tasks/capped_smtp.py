"""aiosmtpd's SMTP server protocol with a connection cap: a connection over it is refused before
the greeting, and aiosmtpd never starts on it (no session, no handler task), so a flood of
clients costs one write and a close each. The submission listener and the catcher share it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP


class CappedSMTP(SMTP):
    """SMTP that asks `refusal` about each new connection; `live` holds those it serves."""

    def __init__(self, handler: Any, live: set[Any], **options: Any) -> None:
        super().__init__(handler, **options)
        self.live = live
        self._refused = False

    def refusal(self, transport: asyncio.BaseTransport) -> bytes | None:
        """The reply line (CRLF included) that refuses this new connection, or None to serve
        it."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the connection itself, not the call after STARTTLS
            refused = self.refusal(transport)
            if refused is not None:
                self._refused = True
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(refused)
                transport.close()
                return
        super().connection_made(transport)
        self.live.add(self)  # a set: the second call, after STARTTLS, changes nothing

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        return False if self._refused else super().eof_received()

    def connection_lost(self, error: Exception | None) -> None:
        if not self._refused:
            super().connection_lost(error)
            self.live.discard(self)
