"""The submission listener: aiosmtpd on its own event-loop thread, bound to SUBMISSION_LISTEN.

`build_server(settings)` checks what the listener needs (certificate, key, account file) and
raises `SettingsError` (one line naming the variable) when something is missing or unusable.
TLS is required for everything that matters: with SUBMISSION_TLS=starttls the client must
STARTTLS before any other command but EHLO, NOOP and QUIT (RFC 3207 §4, 530 5.7.0), and AUTH is
announced only after it; with `tls` the whole connection is TLS from the first byte (RFC 8314).
TLS 1.2 is the minimum. Connections beyond SUBMISSION_MAX_CONNECTIONS, or beyond
SUBMISSION_MAX_CONNECTIONS_PER_CLIENT from one client address (IPv6: its /64, as the failed-login
count), get `421 4.7.0` instead of the greeting and are closed. `stop()` stops accepting, lets
every message being queued finish (so no client loses a 250 it was owed), then drops the
remaining connections; their clients retry.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AnyStr

import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Session

from settings import Listen, Settings, SettingsError, SubmissionTls, env_name
from tasks.api import Mailroom
from tasks.submission import replies
from tasks.submission.accounts import AccountError, Accounts
from tasks.submission.auth_limits import AuthFailureLimiter, client_key
from tasks.submission.handler import Producer, SubmissionHandler
from workers.queue.redis_client import redis_client

log = logging.getLogger("mailroom.submission")

IDENT = "Mailroom ESMTP submission"
IDLE_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command
STOP_GRACE = 30.0  # seconds a shutdown waits for messages being queued
_CLOSE_TIMEOUT = 1.0  # seconds for the TLS close handshake after a 421, then abort


class SubmissionServer:
    """One listener; `start()` returns once it accepts connections, `stop()` ends it."""

    def __init__(
        self,
        handler: SubmissionHandler,
        *,
        listen: Listen,
        tls: SubmissionTls,
        tls_context: ssl.SSLContext,
        hostname: str,
        max_message_bytes: int,
        max_connections: int = 100,
        max_connections_per_client: int = 20,
    ) -> None:
        self.handler = handler
        self._caps = _Caps(max_connections, max_connections_per_client)
        self.listen = listen
        self.tls = tls
        starttls = tls is SubmissionTls.STARTTLS
        self._implicit_context = None if starttls else tls_context
        self._smtp_options: dict[str, Any] = {
            "hostname": hostname,
            "ident": IDENT,
            "data_size_limit": max_message_bytes,  # announced as SIZE, enforced in DATA
            "enable_SMTPUTF8": True,
            "tls_context": tls_context if starttls else None,
            "require_starttls": starttls,
            # aiosmtpd only knows STARTTLS as TLS; with implicit TLS every byte is encrypted
            # already, and the handler checks the transport itself before reading credentials.
            "auth_require_tls": starttls,
            "timeout": IDLE_TIMEOUT,
        }
        self._controller: _Controller | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self.listen.port

    def start(self) -> None:
        """Bind and serve in a background thread.

        :raises OSError: the address cannot be bound (taken, or not this machine's).
        """
        if self._controller is not None:
            raise RuntimeError("the submission listener is already running")
        listener = _bind(self.listen)
        controller = _Controller(
            self.handler,
            listener,
            ssl_context=self._implicit_context,
            caps=self._caps,
            **self._smtp_options,
        )
        try:
            controller.start()
        except BaseException:
            listener.close()
            raise
        self._controller = controller

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop accepting, let messages being queued finish (up to `grace` s), close. Idempotent."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        draining = asyncio.run_coroutine_threadsafe(self._drain(controller, grace), controller.loop)
        draining.result(grace + 5)
        controller.stop()

    async def _drain(self, controller: _Controller, grace: float) -> None:
        if controller.server is not None:
            controller.server.close()
        self.handler.close()
        try:
            await asyncio.wait_for(self.handler.wait_idle(), grace)
        except TimeoutError:
            log.warning("stopped with messages still being queued after %.0f s", grace)
        await controller.close_connections(replies.SHUTTING_DOWN)


@dataclass(frozen=True, slots=True)
class _Caps:
    """Most connections a listener serves at once: in all, and from one client address."""

    total: int
    per_client: int

    def refusal(self, live: set[_SubmissionSMTP], client: str) -> str | None:
        """The 421 for a new connection from `client` (a `client_key`), or None to serve it."""
        if len(live) >= self.total:
            return replies.TOO_MANY_CONNECTIONS
        if sum(1 for smtp in live if smtp.client == client) >= self.per_client:
            return replies.TOO_MANY_FROM_CLIENT
        return None


class _SubmissionSMTP(SMTP):
    """aiosmtpd's SMTP with an enhanced status code on every reply it writes itself, known to
    the controller while connected (so a shutdown can close it), and refusing connections
    over the listener's caps before its greeting."""

    def __init__(
        self, handler: SubmissionHandler, live: set[_SubmissionSMTP], caps: _Caps, **options: Any
    ):
        super().__init__(handler, **options)
        self.live = live
        self.lost = asyncio.Event()
        self.client = ""  # the client's address as counted (client_key), once connected
        self._caps = caps
        self._refused = False
        self._in_mail = False

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the connection itself, not the call after STARTTLS
            peer = transport.get_extra_info("peername")
            self.client = client_key(str(peer[0]) if peer else "")
            refusal = self._caps.refusal(self.live, self.client)
            if refusal is not None:
                # aiosmtpd never starts on this connection: no session, no handler task.
                self._refused = True
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(refusal.encode("ascii") + b"\r\n")
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


class _Controller(Controller):
    """aiosmtpd's threaded controller, serving on a socket bound beforehand."""

    def __init__(
        self,
        handler: SubmissionHandler,
        listener: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None,
        caps: _Caps,
        **smtp_options: Any,
    ) -> None:
        host, port = listener.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, ssl_context=ssl_context)
        self.smtp_options = smtp_options
        self.caps = caps
        self.listener = listener
        self.live: set[_SubmissionSMTP] = set()

    def factory(self) -> SMTP:
        return _SubmissionSMTP(
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


def _bind(listen: Listen) -> socket.socket:
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


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) presenting this certificate chain and key.

    :raises SettingsError: a file is missing or the pair cannot be loaded.
    """
    for field, path in (("submission_cert_file", cert_file), ("submission_key_file", key_file)):
        if not path.is_file():
            raise SettingsError(env_name(field), f"no such file (got '{path}')")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(
            env_name("submission_cert_file"),
            f"cannot load the certificate with MAILROOM_SUBMISSION_KEY_FILE: {exc}",
        ) from None
    return context


def load_accounts(path: Path) -> Accounts:
    """The account file, with at least one account.

    :raises SettingsError: it cannot be read, a line is bad, or it holds no account.
    """
    variable = env_name("submission_accounts")
    try:
        accounts = Accounts.load(path)
    except AccountError as exc:
        raise SettingsError(variable, str(exc)) from None
    if not accounts:
        raise SettingsError(variable, f"no accounts in '{path}' (add lines from mailroom passwd)")
    return accounts


def build_server(
    settings: Settings,
    *,
    producer: Producer | None = None,
    client: redis.Redis | None = None,
    limiter: AuthFailureLimiter | None = None,
) -> SubmissionServer:
    """The listener these settings describe; `producer` defaults to `Mailroom(settings)`.

    :raises SettingsError: the certificate, key or account file is missing or unusable.
    """
    required = {
        "submission_cert_file": settings.submission_cert_file,
        "submission_key_file": settings.submission_key_file,
        "submission_accounts": settings.submission_accounts,
    }
    for field, value in required.items():
        if value is None:
            raise SettingsError(env_name(field), "required by mailroom submission")
    assert settings.submission_cert_file is not None
    assert settings.submission_key_file is not None
    assert settings.submission_accounts is not None
    context = server_context(settings.submission_cert_file, settings.submission_key_file)
    accounts = load_accounts(settings.submission_accounts)
    if client is None:
        # Bounded, so a hung Redis turns into a 451 rather than a stuck client.
        client = redis_client(settings.redis_url, settings.redis_timeout)
    if producer is None:
        producer = Mailroom(settings, client=client)
    handler = SubmissionHandler(
        accounts=accounts,
        limiter=limiter or AuthFailureLimiter(client),
        producer=producer,
        hostname=settings.helo_name,
        max_recipients=settings.submission_max_recipients,
    )
    return SubmissionServer(
        handler,
        listen=settings.submission_listen,
        tls=settings.submission_tls,
        tls_context=context,
        hostname=settings.helo_name,
        max_message_bytes=settings.max_message_bytes,
        max_connections=settings.submission_max_connections,
        max_connections_per_client=settings.submission_max_connections_per_client,
    )
