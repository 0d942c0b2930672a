"""A scripted SMTP sink for tests: a real aiosmtpd server on a loopback address, in a thread.

`Sink(host="127.0.0.2", **options)` listens on `host` and a free port (`sink.port`), chosen
without a race by binding port 0 before aiosmtpd's `Controller` starts. Use it as a context
manager, or `start()`/`stop()`. Any 127/8 address works on Linux, so MX hosts get their own
addresses (127.0.0.2, 127.0.0.3, ...).

Replies are scripted by the recipient's local part (KumoMTA's sink convention):
  `ok@`, `250-...@`, anything else   250 at RCPT and at the final dot
  `450-`/`451-`/`452-`/`550-`/`552-`/`553-`/`554-...@`   that code at RCPT (`RCPT_REPLIES`);
                                      `451-greylist@x.test` gets `451 4.7.1 greylisted`
  `421-...@` (`421-disconnect@`)      the connection is dropped at RCPT, with no reply
  `slow-rcpt@`                        RCPT is answered after `slow_seconds` (default 5)
  `slow-data@`                        the final dot is answered after `slow_seconds`
  `NNN-data@` (`452-data@`, `552-data@`)  RCPT accepted, the final dot gets `DATA_REPLIES[NNN]`
  `disconnect-data@`                  the data is received, then the connection is dropped
Sink-wide options (`SinkOptions`, defaults in `SinkConfig`) cover SIZE, SMTPUTF8, 8BITMIME, a
refused EHLO, STARTTLS (working, required, or broken), implicit TLS, AUTH PLAIN/LOGIN (or a
scripted refusal of them, as Exchange Online's 550 5.7.30), AUTH XOAUTH2 checked by a callable
(with Google's 334 error challenge when asked) and a scripted reply to MAIL FROM (in every
session, or only the first N).

Everything is recorded, per connection, in `SessionRecord`s: commands, EHLO/HELO name, TLS, AUTH
attempts with the credentials received (even those refused for want of TLS), MAIL FROM and
RCPT TO with options and replies, and every message that reached the final dot. Accessors
(`sessions`, `messages`, `received`, `auth_attempts`, `errors`) are thread-safe and return copies.
A reply is recorded before it is sent, so what a client was told is already there when it has
the answer; for what comes later (a session's `closed`), use `wait_until` (`wait_until_async` in
async tests: a blocking wait would stop the test's own loop, client included). Times are
`time.monotonic()` of the test process: a session's `opened_at` and `closed_at`, a message's
`accepted_at`; `peak_concurrent_sessions()` says how many connections were ever open at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from typing import Any, AnyStr, NoReturn, Protocol, Self, TypedDict, Unpack

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException

from tests.support.lifecycle import StartStop

ACCEPT_MAIL = "250 2.1.0 sender ok"
ACCEPT_RCPT = "250 2.1.5 recipient ok"
ACCEPT_DATA = "250 2.0.0 message accepted"
AUTH_NOT_OFFERED = "502 5.5.1 AUTH not available"
AUTH_REQUIRED = "530 5.7.0 authentication required"
EHLO_REFUSED = "502 5.5.1 EHLO not implemented"
STARTTLS_GO_AHEAD = "220 2.0.0 ready to start TLS"
NOT_TLS = b"this is not a TLS handshake\r\n"

RCPT_REPLIES: dict[str, str] = {
    "450": "450 4.2.1 mailbox busy",
    "451": "451 4.7.1 greylisted",
    "452": "452 4.5.3 too many recipients",
    "550": "550 5.1.1 unknown user",
    "552": "552 5.2.2 mailbox full",
    "553": "553 5.1.3 bad recipient address syntax",
    "554": "554 5.7.1 recipient refused",
}
DATA_REPLIES: dict[str, str] = {
    "451": "451 4.3.0 local error in processing",
    "452": "452 4.3.1 insufficient system storage",
    "550": "550 5.7.1 message refused",
    "552": "552 5.3.4 message too big for system",
    "554": "554 5.6.0 message content refused",
}
DEFAULT_SIZE_LIMIT = 2**25

_MAIL_ARG = re.compile(r"^\s*FROM:\s*<([^>]*)>\s*(.*)$", re.IGNORECASE)
_RCPT_ARG = re.compile(r"^\s*TO:\s*<([^>]*)>\s*(.*)$", re.IGNORECASE)


XOAuth2Check = Callable[[str, str], str | None]


class SinkOptions(TypedDict, total=False):
    """Keyword options of `Sink` and `make_sink`; see `SinkConfig` for meanings and defaults."""

    port: int
    hostname: str
    data_size_limit: int | None
    smtputf8: bool
    eightbitmime: bool
    refuse_ehlo: bool
    starttls_context: ssl.SSLContext | None
    require_starttls: bool
    broken_starttls: bool
    implicit_tls_context: ssl.SSLContext | None
    auth: tuple[str, str] | None
    xoauth2: XOAuth2Check | None
    xoauth2_challenge: bool
    basic_reply: str | None
    auth_require_tls: bool
    auth_required: bool
    mail_from_reply: str | None
    mail_from_reply_first: int | None
    slow_seconds: float
    idle_timeout: float
    drop_on_rset: bool
    pipelining: bool


@dataclass(frozen=True)
class SinkConfig:
    """How a sink behaves besides the per-recipient script."""

    host: str = "127.0.0.2"  # loopback address to listen on
    port: int = 0  # 0: a free port; MX tests give every MX host's sink the same MX_PORT
    hostname: str = "sink.test"  # name in the greeting and EHLO reply (no getfqdn() DNS lookup)
    data_size_limit: int | None = DEFAULT_SIZE_LIMIT  # announced SIZE; None: no SIZE, no limit
    smtputf8: bool = True  # announce and accept SMTPUTF8
    eightbitmime: bool = True  # announce 8BITMIME; False also refuses BODY= (555) and 8-bit data
    refuse_ehlo: bool = False  # answer EHLO with EHLO_REFUSED, so clients fall back to HELO
    starttls_context: ssl.SSLContext | None = None  # offer STARTTLS with this server context
    require_starttls: bool = False  # refuse MAIL and others (530) before STARTTLS
    broken_starttls: bool = False  # offer STARTTLS, answer 220, then send NOT_TLS
    implicit_tls_context: ssl.SSLContext | None = None  # the whole connection is TLS (port 465)
    auth: tuple[str, str] | None = None  # (username, password) for AUTH PLAIN/LOGIN; None: no AUTH
    # AUTH XOAUTH2: (user, token) -> None to accept, else the refusal ("535 5.7.3 ..."). Set
    # alone (no `auth`), PLAIN and LOGIN are offered too and refused with `basic_reply`.
    xoauth2: XOAuth2Check | None = None
    xoauth2_challenge: bool = False  # Google's way: a 334 with a base64 JSON error first
    basic_reply: str | None = None  # e.g. "550 5.7.30 Basic authentication is not supported"
    auth_require_tls: bool = True  # AUTH only announced and allowed once TLS is active
    auth_required: bool = False  # refuse MAIL FROM (530) until AUTH succeeded
    mail_from_reply: str | None = None  # e.g. "451 4.3.0 try later": reply to every MAIL FROM
    mail_from_reply_first: int | None = None  # only sessions 1..N get mail_from_reply; None: all
    slow_seconds: float = 5.0  # delay of slow-rcpt@ and slow-data@
    idle_timeout: float = 300.0  # aiosmtpd closes a connection idle that long
    drop_on_rset: bool = False  # hang up without a reply on RSET (a reused connection gone bad)
    pipelining: bool = False  # announce PIPELINING (RFC 2920); aiosmtpd reads commands in order


@dataclass
class AuthAttempt:
    """One AUTH command and whatever credentials the client sent with it, accepted or not."""

    mechanism: str
    tls: bool
    username: str | None = None
    password: str | None = None
    reply: str | None = None  # last line the sink answered; None if the client went away

    @property
    def succeeded(self) -> bool:
        """Whether the sink answered 235."""
        return self.reply is not None and self.reply.startswith("235")


@dataclass
class MailCommand:
    """A MAIL FROM as received: address, parameters (uppercased, as aiosmtpd does), the reply."""

    address: str | None
    options: tuple[str, ...]
    reply: str | None = None


@dataclass
class RcptCommand:
    """An RCPT TO as received; `reply` is None when the sink dropped the connection instead."""

    address: str | None
    options: tuple[str, ...]
    reply: str | None = None


@dataclass
class ReceivedMessage:
    """A message that reached the final dot, with its envelope and the sink's answer."""

    session: int
    mail_from: str
    mail_options: tuple[str, ...]
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool
    reply: str | None  # None: the sink dropped the connection instead of answering
    accepted_at: float | None = None  # time.monotonic() when the 250 was recorded

    @property
    def accepted(self) -> bool:
        """Whether the sink answered 250 to the final dot."""
        return self.reply is not None and self.reply.startswith("250")

    def headers(self) -> EmailMessage:
        """The message's header section, parsed with the modern e-mail policy."""
        parsed = BytesHeaderParser(policy=policy.default).parsebytes(self.content)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def message_id(self) -> str | None:
        """The Message-ID header, or None."""
        value = self.headers()["Message-ID"]
        return None if value is None else str(value)


@dataclass
class SessionRecord:
    """What happened on one connection, in order; `number` counts connections from 1."""

    number: int
    peer: tuple[str, int]
    tls: bool = False  # TLS was active (implicit TLS, or after STARTTLS)
    tls_failed: bool = False  # a STARTTLS handshake failed
    helo: str | None = None  # name given in the last accepted EHLO or HELO
    ehlo: bool = False  # that name came with EHLO (False: HELO, or no greeting accepted)
    commands: list[str] = field(default_factory=list)  # verbs, e.g. ["EHLO", "MAIL", ...]
    chunks: list[bytes] = field(default_factory=list)  # the bytes of each read, as they came
    auth: list[AuthAttempt] = field(default_factory=list)
    mail_from: list[MailCommand] = field(default_factory=list)
    rcpt_to: list[RcptCommand] = field(default_factory=list)
    messages: list[ReceivedMessage] = field(default_factory=list)
    closed: bool = False  # the connection has ended
    opened_at: float = 0.0  # time.monotonic() when the connection was made
    closed_at: float | None = None  # time.monotonic() when it ended; None while open


class Sink(StartStop):
    """A scripted aiosmtpd server in a background thread; see the module docstring."""

    def __init__(self, host: str = "127.0.0.2", **options: Unpack[SinkOptions]) -> None:
        self.config = SinkConfig(host=host, **options)
        self._changed = threading.Condition()
        self._sessions: list[SessionRecord] = []
        self._errors: list[str] = []
        self._connections = 0
        self._recording = False
        self._controller: _Controller | None = None
        self._port = 0

    @property
    def host(self) -> str:
        """The loopback address the sink listens on."""
        return self.config.host

    @property
    def port(self) -> int:
        """The port the sink listens on (0 until started)."""
        return self._port

    def start(self) -> Self:
        """Bind a free port on `host` and serve until `stop()`. Returns self."""
        if self._controller is not None:
            raise RuntimeError("sink already started")
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.config.port))
            self._port = listener.getsockname()[1]
            controller = _Controller(self, listener)
            controller.start()
        except BaseException:
            listener.close()
            raise
        self._controller = controller
        # The controller's readiness probe made a connection of its own: not the test's.
        with self._changed:
            self._sessions.clear()
            self._connections = 0
            self._recording = True
        return self

    def stop(self) -> None:
        """Drop every open connection, stop serving and join the thread. Idempotent."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        closing = asyncio.run_coroutine_threadsafe(controller.close_connections(), controller.loop)
        closing.result(timeout=10)
        controller.stop()
        with self._changed:
            self._recording = False

    @property
    def sessions(self) -> list[SessionRecord]:
        """A copy of every connection's record, in the order they connected."""
        with self._changed:
            return copy.deepcopy(self._sessions)

    @property
    def received(self) -> list[ReceivedMessage]:
        """Every message that reached the final dot, accepted, refused or dropped."""
        return [message for record in self.sessions for message in record.messages]

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The messages the sink accepted (250 after the final dot): what was delivered."""
        return [message for message in self.received if message.accepted]

    def peak_concurrent_sessions(self) -> int:
        """The most connections that were open at the same moment, among those recorded.

        A connection that ends at the instant another one opens is not counted with it.
        """
        # At equal times a close (-1) sorts before an open (+1).
        sessions = self.sessions
        events = sorted(
            [(record.opened_at, 1) for record in sessions]
            + [(record.closed_at, -1) for record in sessions if record.closed_at is not None]
        )
        peak = current = 0
        for _, change in events:
            current += change
            peak = max(peak, current)
        return peak

    @property
    def auth_attempts(self) -> list[AuthAttempt]:
        """Every AUTH command of every session, with the credentials it carried."""
        return [attempt for record in self.sessions for attempt in record.auth]

    @property
    def errors(self) -> list[str]:
        """Unexpected exceptions inside the sink (a bug here, or a client breaking aiosmtpd)."""
        with self._changed:
            return list(self._errors)

    def clear(self) -> None:
        """Forget everything recorded so far, open connections included; new ones are recorded."""
        with self._changed:
            self._sessions.clear()
            self._errors.clear()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until `predicate()` holds, re-checked at each change; False on timeout.

        For what happens after the client has its reply, such as `closed` on a session.
        """
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    async def wait_until_async(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """`wait_until` for async tests: waits in a worker thread, so the test's loop (and a
        client on it, which may be what the predicate waits for) keeps running."""
        return await asyncio.to_thread(self.wait_until, predicate, timeout)

    @contextmanager
    def _change(self) -> Iterator[None]:
        with self._changed:
            yield
            self._changed.notify_all()

    def _new_record(self, peer: tuple[str, int]) -> SessionRecord:
        with self._change():
            self._connections += 1
            record = SessionRecord(number=self._connections, peer=peer, opened_at=time.monotonic())
            if self._recording:
                self._sessions.append(record)
            return record

    def _error(self, text: str) -> None:
        with self._change():
            self._errors.append(text)


class _Controller(Controller):
    """aiosmtpd's threaded controller, serving on an already bound socket, making our SMTP."""

    def __init__(self, sink: Sink, listener: socket.socket) -> None:
        super().__init__(
            None,
            hostname=sink.host,
            port=sink.port,
            ssl_context=sink.config.implicit_tls_context,
        )
        self.sink = sink
        self.listener = listener
        self.live: set[_SinkSMTP] = set()

    def factory(self) -> SMTP:
        config = self.sink.config
        connection = _Connection(self.sink, self.live)
        return _SinkSMTP(
            connection,
            loop=self.loop,
            hostname=config.hostname,
            data_size_limit=config.data_size_limit,
            enable_SMTPUTF8=config.smtputf8,
            decode_data=not config.eightbitmime,
            tls_context=config.starttls_context,
            require_starttls=config.require_starttls,
            timeout=config.idle_timeout,
            # Implicit TLS: aiosmtpd only knows STARTTLS, yet the whole connection is TLS.
            auth_require_tls=config.auth_require_tls and config.implicit_tls_context is None,
            authenticator=connection.authenticate if _auth_offered(config) else None,
            auth_exclude_mechanism=[] if config.xoauth2 is not None else ["XOAUTH2"],
        )

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(
            self._factory_invoker, sock=self.listener, ssl=self.ssl_context
        )

    async def close_connections(self) -> None:
        """Abort every open connection and wait until aiosmtpd has seen each one end."""
        live = list(self.live)
        for smtp in live:
            smtp.abort()
        for smtp in live:
            try:
                await asyncio.wait_for(smtp.lost.wait(), 2.0)
            except TimeoutError:
                self.sink._error(f"connection {smtp.connection.record} did not close")


class _Connection:
    """The aiosmtpd handler of one connection: its hooks decide the replies and record them."""

    def __init__(self, sink: Sink, live: set[_SinkSMTP]) -> None:
        self.sink = sink
        self.config = sink.config
        self.live = live
        self.record = SessionRecord(number=0, peer=("", 0))

    @contextmanager
    def change(self) -> Iterator[SessionRecord]:
        """Mutate the record under the sink's lock, waking `wait_until`."""
        with self.sink._change():
            yield self.record

    def command(self, verb: str) -> None:
        with self.change() as record:
            record.commands.append(verb)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if self.config.refuse_ehlo:
            return [EHLO_REFUSED]
        session.host_name = hostname
        lines = list(responses)
        if self.config.auth is None and self.config.xoauth2 is None:
            lines = [line for line in lines if not line[4:].upper().startswith("AUTH")]
        tls = _tls_active(server)
        if self.config.broken_starttls and not tls:
            lines.insert(-1, "250-STARTTLS")
        if self.config.pipelining:
            lines.insert(-1, "250-PIPELINING")
        return lines

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.config.auth_required and not session.authenticated:
            return AUTH_REQUIRED
        first = self.config.mail_from_reply_first
        if self.config.mail_from_reply is not None and (
            first is None or self.record.number <= first
        ):
            return self.config.mail_from_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return ACCEPT_MAIL

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        local = _local_part(address)
        code, _, rest = local.partition("-")
        if rest != "data":
            if code == "421":
                await self.drop(server)
            if local == "slow-rcpt":
                await asyncio.sleep(self.config.slow_seconds)
            if code in RCPT_REPLIES:
                return RCPT_REPLIES[code]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return ACCEPT_RCPT

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        locals_ = [_local_part(address) for address in envelope.rcpt_tos]
        message = ReceivedMessage(
            session=self.record.number,
            mail_from=envelope.mail_from or "",
            mail_options=tuple(envelope.mail_options),
            rcpt_tos=tuple(envelope.rcpt_tos),
            content=envelope.original_content or b"",
            tls=_tls_active(server),
            reply=None,
        )
        # Recorded on arrival of the final dot: a client that gives up waiting for the reply
        # (slow-data@) closes the connection, and aiosmtpd then cancels this handler.
        with self.change() as record:
            record.messages.append(message)
        if "slow-data" in locals_:
            await asyncio.sleep(self.config.slow_seconds)
        if "disconnect-data" in locals_:
            await self.drop(server)
        codes = [local.partition("-")[0] for local in locals_ if local.endswith("-data")]
        with self.change():
            message.reply = next((DATA_REPLIES[c] for c in codes if c in DATA_REPLIES), ACCEPT_DATA)
            if message.accepted:
                message.accepted_at = time.monotonic()
        return message.reply

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            with self.change() as record:
                record.tls_failed = True
        else:
            self.sink._error(f"session {self.record.number}: {error!r}")
        # aiosmtpd sends this unless the error was the TLS handshake (then it closes).
        return "451 4.3.0 sink error"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        if self.config.basic_reply is not None:
            return AuthResult(success=False, handled=False, message=self.config.basic_reply)
        if self.config.auth is None:
            return AuthResult(success=False, handled=False)
        username = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        with self.change() as record:
            record.auth[-1].username = username
            record.auth[-1].password = password
        return AuthResult(success=(username, password) == self.config.auth, handled=False)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC-less but widespread: base64("user=" U "\x01auth=Bearer " T "\x01\x01")."""
        check = self.config.xoauth2
        try:
            decoded = base64.b64decode(args[1], validate=True).decode()
            fields = dict(part.split("=", 1) for part in decoded.split("\x01") if part)
            user, token = fields["user"], fields["auth"].removeprefix("Bearer ")
        except (IndexError, ValueError, KeyError, binascii.Error):
            return AuthResult(success=False, handled=False, message="501 5.5.2 bad XOAUTH2")
        with self.change() as record:
            record.auth[-1].username, record.auth[-1].password = user, token
        refusal = "535 5.7.3 no XOAUTH2 here" if check is None else check(user, token)
        if refusal is None:
            return AuthResult(success=True, handled=False)
        if self.config.xoauth2_challenge:
            error = b'{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}'
            await server.challenge_auth(error)  # the client answers with an empty line
        return AuthResult(success=False, handled=False, message=refusal)

    async def drop(self, server: SMTP) -> NoReturn:
        """Close the connection without a reply and wait for aiosmtpd to cancel this handler.

        Returning would make aiosmtpd write the reply; waiting lets `connection_lost` end us.
        """
        assert isinstance(server, _SinkSMTP)
        server.abort()
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable: the connection was aborted")


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP, recording each command, the replies and the connection's TLS state.

    A command's reply is recorded in `push`, before it is written, so a test that has its
    reply can already read it from the sink.
    """

    def __init__(self, connection: _Connection, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.connection = connection
        self.lost = asyncio.Event()
        self._on_reply: Callable[[str], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None
        super().connection_made(transport)
        tls = transport.get_extra_info("ssl_object") is not None
        if first:
            self.connection.live.add(self)
            self.connection.record = self.connection.sink._new_record(
                _peer(transport.get_extra_info("peername"))
            )
        if tls:
            with self.connection.change() as record:
                record.tls = True

    def data_received(self, data: bytes) -> None:
        with self.connection.change() as record:
            record.chunks.append(data)
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if not self.lost.is_set():
            self.lost.set()
            self.connection.live.discard(self)
            with self.connection.change() as record:
                record.closed = True
                record.closed_at = time.monotonic()

    def abort(self) -> None:
        """Drop the connection at once, TLS or not."""
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()

    async def push(self, status: AnyStr) -> None:
        if self._on_reply is not None:
            line = status if isinstance(status, str) else status.decode("utf-8", "replace")
            with self.connection.change():
                self._on_reply(line)
        await super().push(status)

    async def _run(
        self, verb: str, command: Awaitable[None], on_reply: Callable[[str], None] | None = None
    ) -> None:
        """Record `verb`, then run aiosmtpd's command with `on_reply` seeing each reply line."""
        self.connection.command(verb)
        self._on_reply = on_reply
        try:
            await command
        finally:
            self._on_reply = None

    async def smtp_EHLO(self, hostname: str) -> None:
        await self._run("EHLO", super().smtp_EHLO(hostname), self._greeting(hostname, ehlo=True))

    async def smtp_HELO(self, hostname: str) -> None:
        await self._run("HELO", super().smtp_HELO(hostname), self._greeting(hostname, ehlo=False))

    async def smtp_STARTTLS(self, arg: str) -> None:
        if not self.connection.config.broken_starttls:
            await self._run("STARTTLS", super().smtp_STARTTLS(arg))
            return
        self.connection.command("STARTTLS")
        await self.push(STARTTLS_GO_AHEAD)
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.write(NOT_TLS)
        # The client's handshake now fails; it hangs up, and connection_lost cancels this.
        await asyncio.get_running_loop().create_future()

    async def smtp_AUTH(self, arg: str | None) -> None:
        attempt = _auth_attempt(arg or "", tls=_tls_active(self))
        with self.connection.change() as record:
            record.auth.append(attempt)
        if not _auth_offered(self.connection.config):
            command = self.push(AUTH_NOT_OFFERED)
        else:
            command = super().smtp_AUTH(arg)
        await self._run("AUTH", command, lambda line: setattr(attempt, "reply", line))

    async def smtp_MAIL(self, arg: str | None) -> None:
        mail = MailCommand(*_split_arg(_MAIL_ARG, arg))
        with self.connection.change() as record:
            record.mail_from.append(mail)
        await self._run("MAIL", super().smtp_MAIL(arg), lambda line: setattr(mail, "reply", line))

    async def smtp_RCPT(self, arg: str | None) -> None:
        rcpt = RcptCommand(*_split_arg(_RCPT_ARG, arg))
        with self.connection.change() as record:
            record.rcpt_to.append(rcpt)
        await self._run("RCPT", super().smtp_RCPT(arg), lambda line: setattr(rcpt, "reply", line))

    async def smtp_DATA(self, arg: str) -> None:
        await self._run("DATA", super().smtp_DATA(arg))

    async def smtp_RSET(self, arg: str) -> None:
        if self.connection.config.drop_on_rset:
            self.connection.command("RSET")
            await self.connection.drop(self)
        await self._run("RSET", super().smtp_RSET(arg))

    async def smtp_NOOP(self, arg: str) -> None:
        await self._run("NOOP", super().smtp_NOOP(arg))

    async def smtp_QUIT(self, arg: str) -> None:
        await self._run("QUIT", super().smtp_QUIT(arg))

    def _greeting(self, hostname: str, *, ehlo: bool) -> Callable[[str], None]:
        def on_reply(line: str) -> None:
            if line.startswith("250 "):  # the last line of a positive reply
                self.connection.record.helo = hostname
                self.connection.record.ehlo = ehlo

        return on_reply


def _auth_offered(config: SinkConfig) -> bool:
    return config.auth is not None or config.xoauth2 is not None


def _tls_active(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def _local_part(address: str) -> str:
    return address.rpartition("@")[0].lower()


def _peer(peername: Any) -> tuple[str, int]:
    return (str(peername[0]), int(peername[1])) if peername else ("", 0)


def _split_arg(pattern: re.Pattern[str], arg: str | None) -> tuple[str | None, tuple[str, ...]]:
    match = pattern.match(arg or "")
    if match is None:
        return None, ()
    return match.group(1), tuple(match.group(2).upper().split())


def _auth_attempt(arg: str, *, tls: bool) -> AuthAttempt:
    """An attempt from the AUTH command line, with the credentials of an initial response."""
    mechanism, _, initial = arg.strip().partition(" ")
    attempt = AuthAttempt(mechanism=mechanism.upper(), tls=tls)
    initial = initial.strip()
    if not initial or initial == "=":
        return attempt
    try:
        decoded = base64.b64decode(initial, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        attempt.username = initial  # not base64: keep what was sent, it may still be a secret
        return attempt
    if attempt.mechanism == "PLAIN":
        parts = decoded.split("\0")
        if len(parts) == 3:
            attempt.username, attempt.password = parts[1], parts[2]
        else:
            attempt.username = decoded
    else:
        attempt.username = decoded
    return attempt


class MakeSink(Protocol):
    """Type of the `make_sink` fixture: start a sink on `host` with `SinkOptions`."""

    def __call__(self, host: str = "127.0.0.2", **options: Unpack[SinkOptions]) -> Sink: ...


@pytest.fixture
def make_sink() -> Iterator[MakeSink]:
    """Start sinks for this test; each is stopped after it, and must have recorded no errors."""
    sinks: list[Sink] = []

    def make(host: str = "127.0.0.2", **options: Unpack[SinkOptions]) -> Sink:
        sink = Sink(host, **options).start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()
    errors = [error for sink in sinks for error in sink.errors]
    assert not errors, f"the SMTP sink failed inside: {errors}"
