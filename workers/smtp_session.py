"""One SMTP conversation with one server address: steps 1 and 3 to 6 of the session.

open (TCP connect, greeting, EHLO with HELO fallback, STARTTLS, EHLO again, AUTH) → MAIL FROM →
RCPT TO per recipient → DATA → QUIT. Every command's reply is recorded with its step, enhanced
code and duration. The session never raises for anything the network or the server does: each
library exception becomes a `Reply` in `_translate`, the one boundary with aiosmtplib (STYLE.md
rule 3). Which recipient a failure applies to follows Postfix's `smtp_trouble.c`: a failure
while opening, at MAIL FROM or at DATA hits every recipient still in play; a RCPT refusal hits
that recipient only; QUIT never changes an outcome.

aiosmtplib opens the session; the transactions then run on the connection's `Wire`
(`workers.smtp_wire`), pipelined when the server offers PIPELINING (RFC 2920).

With a `ConnectionPool`, a session first takes a parked connection to the same server and sends
RSET (pipelined with the transaction); if RSET fails (the server closed it while it was parked),
nothing of this message has been sent, so the connection is dropped and a fresh one opened: no
duplicate is possible. After the transaction a healthy connection is parked again instead of QUIT.
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

from workers import reply as replies
from workers.connection_pool import Connection, ConnectionPool, PoolKey
from workers.envelope import OutboundMessage
from workers.rate_limits import is_throttling
from workers.reply import Code, Reply, Step, parse_reply
from workers.smtp_wire import NoReply, Wire, message_bytes
from workers.tls_policy import TlsMode, TlsPolicy

_STEPS = {
    "RSET": Step.OPEN_SESSION,
    "MAIL FROM": Step.MAIL_FROM,
    "RCPT TO": Step.RCPT_TO,
    "DATA": Step.DATA,
}
_AMBIGUOUS = "; the server may have accepted the message, so it will be retried (at least once)"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed per phase (RFC 5321 §4.5.3.2 gives the upper bounds)."""

    connect: float  # TCP connect (and the TLS handshake of implicit TLS)
    command: float  # each command's reply: greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, QUIT
    data: float  # DATA: the 354 and the reply after the final dot
    session: float  # the whole delivery, every server tried included


@dataclass(frozen=True, slots=True)
class Credentials:
    """The relay's service account; the password is kept out of every repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One command and its reply, as the status record shows it."""

    command: str  # "connect", "EHLO", "HELO", "STARTTLS", "AUTH PLAIN", "MAIL FROM", ...
    reply: Reply
    ms: float


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
    kept_lease: bool = False  # the caller's connection lease now belongs to a parked connection


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
    lease: str | None = None,
    connection: Connection | None = None,
    inherited_lease: str | None = None,
) -> SessionResult:
    """Run one SMTP session with `host` at `address`, returning every recipient's final reply.

    `tls` None means plaintext (the retry after a failed opportunistic handshake); `deadline`
    is an event-loop time after which the session is abandoned and unfinished recipients are
    deferred. Credentials are only ever sent inside TLS. A `probe` stops after RCPT TO (no
    DATA; `mailroom check`), so each accepted recipient's reply is its RCPT reply. With `pool`,
    a parked connection is reused and a healthy one parked afterwards (never for a probe); a
    connection opened here takes over `lease` (the delivery's connection-cap lease) while it is
    parked, and `kept_lease` says so. `connection` is one the caller already took from `pool`;
    `inherited_lease`, one a closed connection left to this delivery, for the connection it opens.
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
    conversation.lease = lease
    conversation.spare_lease = inherited_lease
    conversation.pool = reuse
    conversation.key = key
    try:
        async with asyncio.timeout_at(deadline):
            await conversation.run(port, tls, credentials, probe=probe, given=connection)
    except TimeoutError:
        conversation.abandon(replies.deadline_exceeded(host, conversation.step))
    finally:
        conversation.close()
        await asyncio.sleep(0)  # one loop turn lets the aborted transport release its socket
    return conversation.result()


class _Conversation:
    """The state of one session: the client, the steps so far, the replies decided so far."""

    def __init__(
        self,
        host: str,
        address: str,
        message: OutboundMessage,
        recipients: Sequence[str],
        helo: str,
        timeouts: Timeouts,
    ) -> None:
        self.host = host
        self.address = address
        self.message = message
        self.recipients = list(recipients)
        self.helo = helo
        self.timeouts = timeouts
        self.steps: list[StepRecord] = []
        self.replies: dict[str, Reply] = {}
        self.accepted: dict[str, Reply] = {}  # recipients accepted at RCPT TO, with that reply
        self.step = Step.OPEN_SESSION
        self.connection: Connection | None = None
        self.pool: ConnectionPool | None = None
        self.key: PoolKey | None = None
        self.lease: str | None = None  # the delivery's own connection lease (its caller's)
        self.spare_lease: str | None = None  # a dropped parked connection's, to reuse
        self.kept_lease = False
        self.greeted = False
        self.tls_active = False
        self.tls_failed = False
        self.body_sent = False  # the message went out after a 354: a lost reply is ambiguous
        self.lost = False  # the last reply was made up because the server's never came
        self.throttled = False  # the server gave a throttling reply (421, 45x 4.7.x, ...)

    def result(self) -> SessionResult:
        return SessionResult(
            self.host,
            self.address,
            tuple(self.steps),
            dict(self.replies),
            self.greeted,
            self.tls_active,
            self.tls_failed,
            self.kept_lease,
        )

    @property
    def smtp(self) -> SMTP | None:
        return None if self.connection is None else self.connection.smtp

    def close(self) -> None:
        """Close the connection unless it was parked in the pool.

        A lease it holds that is not the caller's own goes back through the pool (the caller
        releases its own).
        """
        connection, self.connection = self.connection, None
        if connection is not None:
            if connection.lease == self.lease:
                connection.lease = None
            if self.pool is not None and self.key is not None:
                self.pool.discard(self.key, connection)
            else:
                connection.close()
        if self.spare_lease is not None and self.pool is not None and self.key is not None:
            self.pool.give_back_lease(self.key, self.spare_lease)
            self.spare_lease = None

    def abandon(self, reply: Reply) -> None:
        """Give `reply` to every recipient that has no final reply yet."""
        if self.body_sent:
            reply = Reply(reply.code, reply.enhanced, reply.text + _AMBIGUOUS, reply.step)
        for recipient in self.recipients:
            self.replies.setdefault(recipient, reply)

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
        if parked is None or not await self.resume(parked, probe):
            if not await self.open(port, tls, credentials):
                return
            await self.transaction(probe, reset=False)
        connection = self.connection
        # A server that asked to slow down gets its session ended, not kept open.
        reusable = not self.lost and not self.throttled
        if reusable and pool is not None and key is not None and connection is not None:
            parked_now = pool.give(key, connection)
            if parked_now:
                # Parked: the next delivery to this server RSETs it; an own lease stays with it.
                self.kept_lease = self.lease is not None and connection.lease == self.lease
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
        if await self.transaction(probe, reset=True):
            return True
        # Its lease now covers the fresh connection that replaces it.
        self.spare_lease, connection.lease = connection.lease, None
        self.close()
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
            # The connection holds a cap lease for as long as it is open or parked: the
            # delivery's own, or the one of the parked connection it replaces.
            if self.lease is not None:
                self.connection.lease = self.lease
            else:
                self.connection.lease, self.spare_lease = self.spare_lease, None
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
        if not self.smtp.is_connected:
            return self.fail(ehlo)
        # RFC 5321 §3.2: a server that does not know EHLO answers 500/502; HELO still works.
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

    async def transaction(self, probe: bool, *, reset: bool) -> bool:
        """Steps 3 to 5 on an open connection; a reused one (`reset`) gets RSET first.

        With PIPELINING every command up to DATA goes out in one write (RFC 2920 §3.1) and
        the replies are read in order; without it, one command per reply, and nothing is sent
        that an earlier reply made pointless. The message itself only follows a 354, so a
        transaction whose MAIL FROM or every RCPT TO failed never sends it. False when RSET
        failed: the caller drops the connection (and with it whatever was pipelined).
        """
        connection = self.connection
        assert connection is not None
        assert connection.wire is not None
        wire = connection.wire
        self.step = Step.MAIL_FROM
        commands = self.unsendable() or self.commands(reset=reset, probe=probe)
        if isinstance(commands, Reply):
            self.fail(commands, "MAIL FROM")
            return True  # nothing was sent: a reused connection is as clean as it was
        connection.transactions += 1
        pipelined = connection.pipelining
        started = time.perf_counter()
        if pipelined:
            wire.send(b"".join(line for _, line, _ in commands), len(commands))
        sender_accepted = False
        for verb, line, recipient in commands:
            if not pipelined:
                if verb in ("RCPT TO", "DATA") and not sender_accepted:
                    break
                if verb == "DATA" and not self.accepted:
                    break
                started = time.perf_counter()
                wire.send(line, 1)
            self.step = _STEPS[verb]
            answer = await self.read(wire, verb, started, self.timeouts.command)
            if verb == "RSET":
                if answer.reply_class != 2:
                    return False
            elif verb == "MAIL FROM":
                sender_accepted = answer.reply_class == 2
                if not sender_accepted:
                    self.fail(answer)
            elif verb == "RCPT TO" and sender_accepted:
                assert recipient is not None
                self.rcpt_reply(recipient, answer)
            elif verb == "DATA":
                await self.data(wire, answer, started, sendable=sender_accepted)
            if self.lost or answer.code == Code.SERVICE_UNAVAILABLE:
                break  # RFC 5321 §3.8: 421 means the server is closing the session
        if probe:
            self.replies.update(self.accepted)
        return True

    def commands(self, *, reset: bool, probe: bool) -> list[tuple[str, bytes, str | None]] | Reply:
        """The transaction's commands as (verb, line, recipient); a `Reply` for an address that
        cannot go on the wire (a control character, or non-ASCII without SMTPUTF8)."""
        assert self.smtp is not None
        options = []
        if self.smtp.supports_extension("size"):
            options.append(f" SIZE={self.message.size}")
        if self.message.smtputf8:
            options.append(" SMTPUTF8")
        if self.message.eight_bit and self.smtp.supports_extension("8bitmime"):
            options.append(" BODY=8BITMIME")
        sender = self.line(f"MAIL FROM:<{self.message.sender}>{''.join(options)}")
        if sender is None:
            return replies.bad_address(Step.MAIL_FROM)
        commands: list[tuple[str, bytes, str | None]] = []
        if reset:
            commands.append(("RSET", b"RSET\r\n", None))
        commands.append(("MAIL FROM", sender, None))
        for recipient in self.recipients:
            line = self.line(f"RCPT TO:<{recipient}>")
            if line is None:
                self.replies[recipient] = replies.bad_address(Step.RCPT_TO)
            else:
                commands.append(("RCPT TO", line, recipient))
        if not probe:
            commands.append(("DATA", b"DATA\r\n", None))
        return commands

    def line(self, command: str) -> bytes | None:
        """`command` as one CRLF-terminated line, or None when it must not be sent as is."""
        if any(ord(c) < 32 or ord(c) == 127 for c in command):
            return None  # CR, LF or NUL would smuggle another command in
        try:
            return command.encode(self.encoding) + b"\r\n"
        except UnicodeEncodeError:
            return None

    def unsendable(self) -> Reply | None:
        """A reason this server cannot take this message at all, known before MAIL FROM."""
        assert self.smtp is not None
        limit = self.smtp.esmtp_extensions.get("size", "")
        if limit.isdigit() and 0 < int(limit) < self.message.size:
            return replies.message_too_big(self.host, self.message.size, int(limit))
        if self.message.smtputf8 and not self.smtp.supports_extension("smtputf8"):
            return replies.smtputf8_unavailable(self.host)
        return None

    def rcpt_reply(self, recipient: str, answer: Reply) -> None:
        if answer.reply_class == 2:
            self.accepted[recipient] = answer
            return
        self.replies[recipient] = answer
        if self.lost or answer.code == Code.SERVICE_UNAVAILABLE:
            # A 421 or a dropped connection ends the session for everyone still waiting, the
            # recipients already accepted included: no DATA will follow.
            self.accepted.clear()
            self.abandon(answer)

    async def data(self, wire: Wire, answer: Reply, started: float, *, sendable: bool) -> None:
        """Step 5 from DATA's first reply on: the message after a 354, then the final reply."""
        if not sendable or not self.accepted:
            if answer.code == Code.START_INPUT:
                # Pipelined DATA a server accepted after refusing MAIL FROM or every RCPT TO:
                # hang up rather than end an empty message with a dot.
                wire.abort("DATA accepted with nobody to send to")
                self.lost = True
            return
        if answer.code == Code.START_INPUT:
            self.steps.pop()  # one DATA step, with the reply after the dot, as before
            wire.send(message_bytes(self.message.data), 1)
            self.body_sent = True
            await wire.drain()
            answer = await self.read(wire, "DATA", started, self.timeouts.data)
            if self.lost:
                # RFC 5321 §6.1's duplicate-delivery window: the dot may have arrived unanswered.
                answer = Reply(answer.code, answer.enhanced, answer.text + _AMBIGUOUS, answer.step)
        for recipient in self.accepted:
            self.replies[recipient] = answer

    async def read(self, wire: Wire, verb: str, started: float, timeout: float) -> Reply:
        """The next reply from `wire`, recorded as `verb`'s; a made-up one if none came."""
        got = await wire.read(timeout)
        if isinstance(got, NoReply):
            self.lost = True
            answer = replies.connection_dropped(self.host, self.step, got.reason)
            self.record(verb, answer, started)
            return answer
        answer = parse_reply(got.code, got.text, self.step)
        if answer.reply_class > 3:
            self.throttled = self.throttled or is_throttling(answer.code, answer.enhanced)
        self.steps.append(StepRecord(verb, answer, (got.at - started) * 1000))
        return answer

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
            await self.read(connection.wire, "QUIT", started, self.timeouts.command)

    # Plumbing.

    @property
    def encoding(self) -> str:
        return "utf-8" if self.message.smtputf8 else "ascii"

    def take_over(self) -> bool:
        """Hand the open connection to a `Wire` for its transactions (see `workers.smtp_wire`)."""
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

    def fail(self, reply: Reply, command: str | None = None) -> bool:
        """Apply a session-wide failure to everyone still waiting; always False.

        `command` names a reply Mailroom decided itself, which no `call` has recorded yet.
        """
        if command is not None:
            self.steps.append(StepRecord(command, reply, 0.0))
        self.abandon(reply)
        return False

    def record(self, command: str, reply: Reply, started: float) -> None:
        self.steps.append(StepRecord(command, reply, (time.perf_counter() - started) * 1000))

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
            self.throttled = self.throttled or is_throttling(answer.code, answer.enhanced)
        except (SMTPException, OSError) as exc:
            self.lost = True
            answer = _translate(exc, self.host, self.step, handshake=handshake)
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
    return Reply(Code.LOCAL_ERROR, "4.3.0", f"{host}: {exc}", step)


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
