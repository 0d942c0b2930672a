"""The catcher's SMTP listener: aiosmtpd's threaded Controller, with at most MAX_CONNECTIONS
clients at once (more get `421 4.7.0` before the greeting and are closed), so a runaway client
cannot take every file descriptor of a developer's machine."""

from __future__ import annotations

import asyncio

from aiosmtpd.controller import Controller

from settings import Listen
from tasks.capped_smtp import CappedSMTP
from tasks.catcher.handler import CatcherHandler

MAX_CONNECTIONS = 100
IDLE_TIMEOUT = 60.0  # seconds a client may stay silent; local clients are quick
_TOO_MANY = b"421 4.7.0 Too many connections to the catcher, try again later\r\n"


class _CatcherSMTP(CappedSMTP):
    """The catcher's SMTP: at most MAX_CONNECTIONS clients at once."""

    def refusal(self, transport: asyncio.BaseTransport) -> bytes | None:
        return _TOO_MANY if len(self.live) >= MAX_CONNECTIONS else None


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
        self._live: set[_CatcherSMTP] = set()

    def factory(self) -> CappedSMTP:
        return _CatcherSMTP(self.handler, self._live, **self.SMTP_kwargs)
