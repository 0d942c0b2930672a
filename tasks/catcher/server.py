"""The catcher's SMTP listener: aiosmtpd's threaded Controller, with at most MAX_CONNECTIONS
clients at once (more get `421 4.7.0` before the greeting and are closed), so a runaway client
cannot take every file descriptor of a developer's machine."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from settings import Listen
from tasks.catcher.handler import CatcherHandler

MAX_CONNECTIONS = 100
IDLE_TIMEOUT = 60.0  # seconds a client may stay silent; local clients are quick
_TOO_MANY = b"421 4.7.0 Too many connections to the catcher, try again later\r\n"


class _CappedSMTP(SMTP):
    """aiosmtpd's SMTP, refusing a connection over the cap before its greeting."""

    def __init__(self, handler: CatcherHandler, live: set[_CappedSMTP], **options: Any):
        super().__init__(handler, **options)
        self._live = live
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and len(self._live) >= MAX_CONNECTIONS:
            self._refused = True  # aiosmtpd never starts on this connection
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(_TOO_MANY)
            transport.close()
            return
        super().connection_made(transport)
        self._live.add(self)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        return False if self._refused else super().eof_received()

    def connection_lost(self, error: Exception | None) -> None:
        if not self._refused:
            super().connection_lost(error)
            self._live.discard(self)


class CatcherController(Controller):
    """The listener on `listen`, on its own thread; `start()` returns once it accepts."""

    def __init__(self, handler: CatcherHandler, listen: Listen, max_bytes: int) -> None:
        super().__init__(
            handler,
            hostname=listen.host,
            port=listen.port,
            server_hostname="catcher.mailroom.invalid",
            ident="Mailroom catcher",
            data_size_limit=max_bytes,  # announced as SIZE, enforced in DATA (552)
            enable_SMTPUTF8=True,
            timeout=IDLE_TIMEOUT,
        )
        self._live: set[_CappedSMTP] = set()

    def factory(self) -> SMTP:
        return _CappedSMTP(self.handler, self._live, **self.SMTP_kwargs)
