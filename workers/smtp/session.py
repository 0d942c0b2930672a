"""One SMTP conversation with one server address: steps 1 and 6 of the session, around 3 to 5.

open (TCP connect, greeting, EHLO with HELO fallback, STARTTLS, EHLO again, AUTH) → one mail
transaction (`workers.smtp.transaction`: MAIL FROM, RCPT TO per recipient, DATA) → QUIT, or the
connection parked for the next message. Every command's reply is recorded with its step, enhanced
code and duration (`workers.smtp.record`). The session never raises for anything the network or
the server does: each library exception becomes a `Reply` in `_translate`, the one boundary with
aiosmtplib (STYLE.md rule 3). A failure while opening hits every recipient; QUIT never changes an
outcome.

aiosmtplib opens the session; the transactions then run on the connection's `Wire`
(`workers.smtp.wire`), pipelined when the server offers PIPELINING (RFC 2920).

With a `ConnectionPool`, a session first takes a parked connection to the same server and sends
RSET (pipelined with the transaction); if RSET fails (the server closed it while it was parked),
nothing of this message has been sent, so the connection is dropped and a fresh one opened: no
duplicate is possible. After the transaction a healthy connection is parked again instead of QUIT.
The session never handles connection-cap leases itself: the pool moves them between the
connection and the delivery's `Slot` (`attach` on open, `detach` on a dropped connection).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from aiosmtplib import SMTP, SMTPResponse
from aiosmtplib.errors import (
    SMTPConnectTimeoutError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from workers.model import reply as replies
from workers.model.envelope import OutboundMessage
from workers.model.reply import Code, Reply, Step, parse_reply
from workers.model.report import StepRecord
from workers.model.throttling import is_throttling
from workers.smtp.connection_pool import Connection, ConnectionPool, PoolKey, Slot
from workers.smtp.record import Ledger, Timeouts
from workers.smtp.tls_policy import TlsMode, TlsPolicy
from workers.smtp.transaction import read_reply, transaction
from workers.smtp.wire import Wire


@dataclass(frozen=True, slots=True)
class Credentials:
    """The relay's service account; the password is kept out of every repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SessionResult:
    """What one conversation did: its steps and the final reply for each recipient."""

    host: str
    address: str
    steps: tuple[StepRecord, ...]
    replies: dict[str, Reply]
    greeted: bool  # the server said 2xx at connect: counts as a session (Postfix's session limit)
    tls: bool  # the message, if sent, went over TLS
    tls_failed: bool  # opportunistic TLS failed: this address may be retried without TLS


async def run_session(
    host: str,
    address: str,
    port: int,
    message: OutboundMessage,
    recipients: Sequence[str],
    *,
    tls: TlsPolicy | None,
    helo: str,
    timeouts: Timeouts,
    credentials: Credentials | None,
    deadline: float,
    probe: bool = False,
    pool: ConnectionPool | None = None,
    destination: str = "",
    slot: Slot | None = None,
    connection: Connection | None = None,
) -> SessionResult:
    """Run one SMTP session with `host` at `address`, returning every recipient's final reply.

    `tls` None means plaintext (the retry after a failed opportunistic handshake); `deadline`
    is an event-loop time after which the session is abandoned and unfinished recipients are
    deferred. Credentials are only ever sent inside TLS. A `probe` stops after RCPT TO (no
    DATA; `mailroom check`), so each accepted recipient's reply is its RCPT reply. With `pool`,
    a parked connection is reused and a healthy one parked afterwards (never for a probe).
    `slot` is the delivery's right to a connection (`workers.smtp.connection_pool`): a connection
    opened here takes its lease, one dropped gives it back; it must hold one unless a parked
    connection is used. Without it the session uses (and empties) a slot of its own, as an
    uncapped destination's. `connection` is one the caller already took from `pool`.
    """
    key = PoolKey(
        destination,
        host,
        address,
        port,
        None if tls is None else id(tls),
        None if credentials is None else credentials.username,
    )
    reuse = None if probe else pool
    conversation = _Conversation(host, address, message, recipients, helo, timeouts)
    own = None
    if slot is None:
        slot = own = Slot(destination, held=True)
    conversation.slot = slot
    conversation.pool = reuse
    conversation.key = key
    try:
        async with asyncio.timeout_at(deadline):
            await conversation.run(port, tls, credentials, probe=probe, given=connection)
    except TimeoutError:
        conversation.abandon(replies.deadline_exceeded(host, conversation.step))
    finally:
        conversation.close()
        if own is not None and reuse is not None:
            await reuse.free(own)  # what a dropped parked connection left in it
        await asyncio.sleep(0)  # one loop turn lets the aborted transport release its socket
    return conversation.result()


class _Conversation(Ledger):
    """The state of one session: the connection, and (as a `Ledger`) what it recorded."""

    def __init__(
        self,
        host: str,
        address: str,
        message: OutboundMessage,
        recipients: Sequence[str],
        helo: str,
        timeouts: Timeouts,
    ) -> None:
        super().__init__(host, recipients)
        self.address = address
        self.message = message
        self.helo = helo
        self.timeouts = timeouts
        self.connection: Connection | None = None
        self.pool: ConnectionPool | None = None
        self.key: PoolKey | None = None
        self.slot = Slot("", held=True)  # the delivery's right to open a connection
        self.greeted = False
        self.tls_active = False
        self.tls_failed = False

    def result(self) -> SessionResult:
        return SessionResult(
            self.host,
            self.address,
            tuple(self.steps),
            dict(self.replies),
            self.greeted,
            self.tls_active,
            self.tls_failed,
        )

    @property
    def smtp(self) -> SMTP | None:
        return None if self.connection is None else self.connection.smtp

    def close(self) -> None:
        """Close the connection unless it was parked in the pool; its lease goes to the slot."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        if self.pool is not None:
            self.pool.detach(self.slot, connection)
        else:
            connection.close()

    async def run(
        self,
        port: int,
        tls: TlsPolicy | None,
        credentials: Credentials | None,
        *,
        probe: bool,
        given: Connection | None,
    ) -> None:
        pool, key = self.pool, self.key
        parked = given
        if parked is None and pool is not None and key is not None:
            parked = pool.take(key)
        if parked is not None and pool is not None:
            await pool.free(self.slot)  # the parked connection holds a lease of its own
        if parked is None or not await self.resume(parked, probe):
            if not await self.open(port, tls, credentials):
                return
            assert self.connection is not None
            await transaction(
                self, self.connection, self.message, self.timeouts, reset=False, probe=probe
            )
        connection = self.connection
        # A server that asked to slow down gets its session ended, not kept open.
        reusable = not self.lost and not self.throttled
        if (
            reusable
            and pool is not None
            and key is not None
            and connection is not None
            and pool.give(key, connection)
        ):
            # Parked, with its lease: the next delivery to this server RSETs it.
            self.connection = None
            return
        await self.quit()

    async def resume(self, connection: Connection, probe: bool) -> bool:
        """Run the transaction on a parked connection, after RSET.

        False (and the connection dropped) when RSET fails: nothing of this message reached
        the server, so a fresh connection can be opened without any risk of a duplicate.
        """
        self.connection = connection
        self.greeted = True
        self.tls_active = connection.tls_active
        if await transaction(
            self, connection, self.message, self.timeouts, reset=True, probe=probe
        ):
            return True
        self.close()  # its lease now covers the fresh connection that replaces it
        self.lost = self.throttled = False
        return False

    # Step 1: open the session.

    async def open(self, port: int, tls: TlsPolicy | None, credentials: Credentials | None) -> bool:
        implicit = tls is not None and tls.mode is TlsMode.IMPLICIT
        started = time.perf_counter()
        connected = await _connect(self.address, port, self.timeouts.connect)
        if isinstance(connected, str):
            self.record("connect", replies.no_answer(self.host, connected), started)
            self.abandon(self.steps[-1].reply)
            return False
        smtp = SMTP(
            hostname=self.host,
            sock=connected,
            use_tls=implicit,
            start_tls=False,
            tls_context=tls.context if tls is not None else None,
            local_hostname=self.helo,
            timeout=self.timeouts.command,
        )
        opened = asyncio.get_running_loop().time()
        self.connection = Connection(smtp, None, tls_active=False, opened=opened)
        if self.pool is not None:
            self.pool.attach(self.slot, self.connection)
        greeting = await self.call("connect", smtp.connect(), started, handshake=implicit)
        self.keep_transport()
        if greeting.reply_class != 2:
            return self.fail(greeting)
        self.greeted = True
        self.set_tls(implicit)
        if not await self.hello():
            return False
        if tls is not None and not implicit and not await self.starttls(tls):
            return False
        if tls is not None and tls.required and not self.tls_active:
            return self.fail(replies.tls_unavailable(self.host), "STARTTLS")
        if credentials is not None and not await self.authenticate(credentials):
            return False
        return self.take_over()

    async def hello(self) -> bool:
        assert self.smtp is not None
        ehlo = await self.call("EHLO", self.smtp.ehlo())
        if ehlo.reply_class == 2:
            return True
        # RFC 5321 §3.2: a server that does not know EHLO answers 500/502 ("command not
        # recognized"); HELO still works there. Any other refusal is the server's answer.
        if not self.smtp.is_connected or ehlo.code not in (Code.SYNTAX_ERROR, Code.NOT_IMPLEMENTED):
            return self.fail(ehlo)
        helo = await self.call("HELO", self.smtp.helo())
        return helo.reply_class == 2 or self.fail(helo)

    async def starttls(self, tls: TlsPolicy) -> bool:
        assert self.smtp is not None
        if not self.smtp.supports_extension("starttls"):
            return not tls.required or self.fail(replies.tls_unavailable(self.host), "STARTTLS")
        started = time.perf_counter()
        upgraded = await self.call(
            "STARTTLS",
            self.smtp.starttls(server_hostname=self.host, tls_context=tls.context),
            started,
            handshake=True,
        )
        if upgraded.reply_class != 2:
            self.tls_failed = not tls.required
            if upgraded.enhanced != "4.7.5":
                refused = replies.tls_failed(self.host, f"STARTTLS refused: {upgraded}")
                return self.fail(refused, "STARTTLS")
            return self.fail(upgraded)
        self.keep_transport()
        self.set_tls(True)
        # RFC 3207 §4.2: forget what the server said before TLS and ask again.
        return await self.hello()

    async def authenticate(self, credentials: Credentials) -> bool:
        assert self.smtp is not None
        if not self.tls_active:
            return self.fail(replies.tls_unavailable(self.host), "AUTH")
        methods = self.smtp.server_auth_methods
        if "plain" in methods:
            command, call = "AUTH PLAIN", self.smtp.auth_plain
        elif "login" in methods:
            command, call = "AUTH LOGIN", self.smtp.auth_login
        else:
            return self.fail(replies.auth_unavailable(self.host), "AUTH")
        answer = await self.call(command, call(credentials.username, credentials.password))
        if answer.reply_class == 2:
            return True
        # A refused login is the operator's to fix, never the recipient's fault: defer, as
        # Postfix's smtp_sasl_auth_soft_bounce does, and keep the server's words.
        refused = Reply(
            Code.LOCAL_ERROR,
            "4.7.0",
            f"authentication as {credentials.username} failed: {answer}",
            Step.OPEN_SESSION,
        )
        return self.fail(refused, command)

    # Steps 3 to 6.

    async def quit(self) -> None:
        connection = self.connection
        assert connection is not None
        self.step = Step.QUIT
        if connection.wire is None:
            if connection.smtp.is_connected:
                await self.call("QUIT", connection.smtp.quit())
            return
        if connection.wire.usable:
            started = time.perf_counter()
            connection.wire.send(b"QUIT\r\n", 1)
            await read_reply(self, connection.wire, "QUIT", started, self.timeouts.command)

    # Plumbing.

    def take_over(self) -> bool:
        """Hand the open connection to a `Wire` for its transactions (see `workers.smtp.wire`)."""
        connection = self.connection
        assert connection is not None
        self.keep_transport()
        transport = connection.transport
        if transport is None or transport.is_closing():
            return self.fail(replies.connection_dropped(self.host, self.step, "connection lost"))
        connection.wire = Wire.take_over(transport)
        connection.pipelining = connection.smtp.supports_extension("pipelining")
        return True

    def keep_transport(self) -> None:
        """Remember the transport in use (the TLS one after a handshake), to abort on close."""
        assert self.connection is not None
        transport = self.connection.smtp.transport
        if isinstance(transport, asyncio.Transport):
            self.connection.transport = transport

    def set_tls(self, active: bool) -> None:
        assert self.connection is not None
        self.tls_active = self.connection.tls_active = active

    async def call(
        self,
        command: str,
        awaitable: Awaitable[SMTPResponse],
        started: float | None = None,
        *,
        handshake: bool = False,
    ) -> Reply:
        """Await one aiosmtplib call and record its reply, whatever happens."""
        started = time.perf_counter() if started is None else started
        self.lost = False
        try:
            response = await awaitable
            answer = parse_reply(response.code, response.message, self.step)
        except SMTPResponseException as exc:
            answer = parse_reply(exc.code, exc.message, self.step)
            self.throttled = self.throttled or is_throttling(
                answer.code, answer.enhanced, answer.text
            )
        except (SMTPException, OSError) as exc:
            self.lost = True
            answer = _translate(exc, self.host, self.step, handshake=handshake)
        if not 200 <= answer.code <= 599:
            # aiosmtplib's -1 (a line with no code, binary, one too long) or a code SMTP has
            # not: nothing more the server says can be trusted, so it is told nothing more.
            self.lost = True
            detail = answer.text if answer.code < 0 else str(answer)
            answer = replies.protocol_error(self.host, self.step, detail)
            if self.smtp is not None:
                self.smtp.close()
        self.record(command, answer, started)
        return answer


async def _connect(address: str, port: int, timeout: float) -> socket.socket | str:
    """Open a TCP connection ourselves, so TLS can check the host *name* we dialled by address."""
    family = socket.AF_INET6 if ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    # Commands go out at once, not held for the server's delayed ACK (Nagle): asyncio only
    # sets this on sockets it creates itself.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout
        )
    except TimeoutError:
        sock.close()
        return f"connect to {address}:{port} timed out after {timeout:g} s"
    except OSError as exc:
        sock.close()
        # asyncio's message ("Connect call failed") hides the reason; errno has it.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return f"connect to {address}:{port} failed: {reason}"
    return sock


def _translate(exc: SMTPException | OSError, host: str, step: Step, *, handshake: bool) -> Reply:
    """Turn a failure with no server reply into the reply it stands for; most specific first."""
    tls_error = _ssl_error(exc)
    if tls_error is not None:
        return replies.tls_failed(host, tls_error)
    if handshake and isinstance(exc, SMTPServerDisconnected | SMTPTimeoutError | ConnectionError):
        return replies.tls_failed(host, f"handshake did not complete ({exc})")
    if isinstance(exc, SMTPConnectTimeoutError):
        return replies.no_answer(host, "no greeting in time")
    if isinstance(exc, SMTPTimeoutError | TimeoutError):
        return replies.connection_dropped(host, step, "no reply in time")
    if isinstance(exc, SMTPServerDisconnected | OSError):
        return replies.connection_dropped(host, step, str(exc) or type(exc).__name__)
    # The rest (an extension missing, a refused option) is the client's problem, not the peer's.
    return Reply(Code.LOCAL_ERROR, "4.3.0", f"{host}: {replies.printable(str(exc))}", step)


def _ssl_error(exc: BaseException) -> str | None:
    """The TLS failure behind `exc`, if there is one, as text that says why."""
    seen: BaseException | None = exc
    for _ in range(8):  # exception chains are short; the bound guards against a cycle
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate not trusted: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS error: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return None
