"""A session's connection while aiosmtplib drives it, and the one boundary with aiosmtplib.

Every aiosmtplib call goes through `Channel.call`, which records its reply in the session's
`Ledger` and never raises for anything the network or the server does: each library exception
becomes a `Reply` in `_translate` (STYLE.md rule 3). Once the session is open, `take_over` hands
the connection to a `Wire` (`workers.smtp.wire`) for its transactions.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable

from aiosmtplib import SMTP, SMTPResponse
from aiosmtplib.errors import (
    SMTPConnectTimeoutError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from workers.model import reply as replies
from workers.model.reply import Code, Reply, Step, parse_reply
from workers.model.throttling import is_throttling
from workers.smtp.connection import Connection
from workers.smtp.peer import Peer
from workers.smtp.record import Ledger
from workers.smtp.wire import Wire


class Channel:
    """The connection to `peer` (none yet, or a parked one), what the session learnt of it, and
    the `ledger` every reply is recorded in."""

    def __init__(self, peer: Peer, ledger: Ledger) -> None:
        self.peer = peer
        self.ledger = ledger
        self.connection: Connection | None = None
        self.greeted = False  # the server said 2xx at connect
        self.tls_active = False
        self.tls_failed = False  # opportunistic TLS failed: the address may be retried without

    @property
    def smtp(self) -> SMTP | None:
        return None if self.connection is None else self.connection.smtp

    def fail(self, reply: Reply, command: str | None = None) -> bool:
        """`Ledger.fail`: a session-wide failure for everyone still waiting; always False."""
        return self.ledger.fail(reply, command)

    def take_over(self) -> bool:
        """Hand the open connection to a `Wire` for its transactions (see `workers.smtp.wire`)."""
        connection = self.connection
        assert connection is not None
        self.keep_transport()
        transport = connection.transport
        if transport is None or transport.is_closing():
            lost = replies.connection_dropped(self.peer.host, self.ledger.step, "connection lost")
            return self.fail(lost)
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
        ledger, host = self.ledger, self.peer.host
        started = time.perf_counter() if started is None else started
        ledger.lost = False
        try:
            response = await awaitable
            answer = parse_reply(response.code, response.message, ledger.step)
        except SMTPResponseException as exc:
            answer = parse_reply(exc.code, exc.message, ledger.step)
            ledger.throttled = ledger.throttled or is_throttling(
                answer.code, answer.enhanced, answer.text
            )
        except (SMTPException, OSError) as exc:
            ledger.lost = True
            tls = self.peer.tls
            why = "" if tls is None else tls.required_by
            answer = _translate(exc, host, ledger.step, handshake=handshake, required_by=why)
        if not 200 <= answer.code <= 599:
            # aiosmtplib's -1 (a line with no code, binary, one too long) or a code SMTP has
            # not: nothing more the server says can be trusted, so it is told nothing more.
            ledger.lost = True
            detail = answer.text if answer.code < 0 else str(answer)
            answer = replies.protocol_error(host, ledger.step, detail)
            if self.smtp is not None:
                self.smtp.close()
        ledger.record(command, answer, started)
        return answer


def _translate(
    exc: SMTPException | OSError, host: str, step: Step, *, handshake: bool, required_by: str = ""
) -> Reply:
    """Turn a failure with no server reply into the reply it stands for; most specific first.
    `required_by` names what required the TLS (an MTA-STS policy) in a TLS failure's text."""
    tls_error = _ssl_error(exc)
    if tls_error is not None:
        return replies.tls_failed(host, tls_error, required_by)
    if handshake and isinstance(exc, SMTPServerDisconnected | SMTPTimeoutError | ConnectionError):
        return replies.tls_failed(host, f"handshake did not complete ({exc})", required_by)
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
