"""The listener's connections: aiosmtpd's SMTP protocol with enhanced status codes on its own
replies and the connection caps (a 421 before the greeting), its Session without a deprecation
warning, and the threaded controller that serves a socket bound beforehand and can hang up on
every client at shutdown."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, AnyStr

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Session

from settings import Listen
from tasks.capped_smtp import CappedSMTP
from tasks.submission import replies
from tasks.submission.auth_limits import client_key
from tasks.submission.handler import SubmissionHandler

_CLOSE_TIMEOUT = 1.0  # seconds for the TLS close handshake after a 421, then abort


@dataclass(frozen=True, slots=True)
class Caps:
    """Most connections a listener serves at once: in all, and from one client address."""

    total: int
    per_client: int

    def refusal(self, live: set[SubmissionSMTP], client: str) -> str | None:
        """The 421 for a new connection from `client` (a `client_key`), or None to serve it."""
        if len(live) >= self.total:
            return replies.TOO_MANY_CONNECTIONS
        if sum(1 for smtp in live if smtp.client == client) >= self.per_client:
            return replies.TOO_MANY_FROM_CLIENT
        return None


class SubmissionSMTP(CappedSMTP):
    """aiosmtpd's SMTP with an enhanced status code on every reply it writes itself, known to
    the controller while connected (so a shutdown can close it), and refusing connections
    over the listener's caps before its greeting."""

    def __init__(
        self, handler: SubmissionHandler, live: set[SubmissionSMTP], caps: Caps, **options: Any
    ):
        super().__init__(handler, live, **options)
        self.lost = asyncio.Event()
        self.client = ""  # the client's address as counted (client_key), once connected
        self._caps = caps
        self._in_mail = False

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def refusal(self, transport: asyncio.BaseTransport) -> bytes | None:
        peer = transport.get_extra_info("peername")
        self.client = client_key(str(peer[0]) if peer else "")
        refused = self._caps.refusal(self.live, self.client)
        return None if refused is None else refused.encode("ascii") + b"\r\n"

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.lost.set()

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._in_mail = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._in_mail = False

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            # aiosmtpd answers any address it cannot parse with 5.1.3 (a bad recipient);
            # in MAIL FROM the address is the sender's, RFC 3463's 5.1.7.
            status = replies.BAD_SENDER if self._in_mail and status == _MALFORMED else status
            await super().push(replies.enhance(status))
        else:
            await super().push(status)

    def hang_up(self, reply: str) -> None:
        """Send `reply` and close (a listener shutting down, RFC 5321 §3.8)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()


_MALFORMED = "553 5.1.3 Error: malformed address"


class _Session(Session):
    """aiosmtpd's Session without the deprecation warning it logs at every successful AUTH.

    aiosmtpd sets the deprecated `login_data` itself; the handler reads `auth_data` only.
    """

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class ListenerController(Controller):
    """aiosmtpd's threaded controller, serving on a socket bound beforehand."""

    def __init__(
        self,
        handler: SubmissionHandler,
        listener: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None,
        caps: Caps,
        **smtp_options: Any,
    ) -> None:
        host, port = listener.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, ssl_context=ssl_context)
        self.smtp_options = smtp_options
        self.caps = caps
        self.listener = listener
        self.live: set[SubmissionSMTP] = set()

    def factory(self) -> SMTP:
        return SubmissionSMTP(
            self.handler, self.live, self.caps, loop=self.loop, **self.smtp_options
        )

    async def close_connections(self, reply: str) -> None:
        """Tell every connected client `reply` (a 421), close, and wait until each has ended."""
        live = list(self.live)
        for smtp in live:
            smtp.hang_up(reply)
        if live:
            ended = asyncio.gather(*(smtp.lost.wait() for smtp in live))
            try:
                await asyncio.wait_for(ended, _CLOSE_TIMEOUT)
            except TimeoutError:
                for smtp in live:
                    if isinstance(smtp.transport, asyncio.Transport):
                        smtp.transport.abort()

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(
            self._factory_invoker, sock=self.listener, ssl=self.ssl_context
        )


def bind(listen: Listen) -> socket.socket:
    """A listening-ready socket bound to `listen` (SO_REUSEADDR), not yet listening."""
    family, kind, proto, _, address = socket.getaddrinfo(
        listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except BaseException:
        listener.close()
        raise
    return listener
