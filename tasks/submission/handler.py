"""The aiosmtpd handler of the submission listener: who may send, what, and when it is accepted.

Order of a transaction and what each step refuses (replies in tasks/submission/replies.py):
- AUTH PLAIN or LOGIN, only over TLS: a client address with too many recent failures is cut off
  (421) before its credentials are read; every login is counted as failed before its password
  is checked and given back when it was right, so parallel connections cannot check more
  passwords than the limit; bad credentials get 535; Redis down gets 454, so a client never
  learns anything from an unchecked login.
- MAIL FROM: only once authenticated (530, so nothing is relayed for anyone unauthenticated);
  the address must be valid and one the account may use (553 5.7.1).
- RCPT TO: valid addresses, at most SUBMISSION_MAX_RECIPIENTS distinct ones (452 4.5.3, which
  asks the client to send the rest in another transaction, RFC 5321 §4.5.3.1.10).
- DATA: aiosmtpd enforces the SIZE limit (552 5.3.4); the message is completed (headers.py) and
  handed to `Mailroom.submit`, and 250 is sent only once content, status record and delivery
  tasks are all in Redis. Any failure there is 451 4.3.0: the client keeps the message and tries
  again, so it is never lost. What a failure may leave behind is cleared (`Mailroom.withdraw`),
  so the retried copy is the only one delivered.
Blocking work (scrypt, Redis, Celery's publish) runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import redis
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from tasks.notification import InvalidNotification, a_label_domain, parse_mailbox
from tasks.submission import replies
from tasks.submission.accounts import Account, Accounts
from tasks.submission.auth_limits import AuthFailureLimiter
from tasks.submission.headers import Trace, complete
from workers.model.envelope import OutboundMessage, outbound

log = logging.getLogger("mailroom.submission")


class Producer(Protocol):
    """What the handler needs of `tasks.api.Mailroom`."""

    def submit(self, message: OutboundMessage, recipients: list[str]) -> str: ...

    def withdraw(self, message_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Blocked:
    """The client's address is over its failed-login limit."""


@dataclass(frozen=True, slots=True)
class _Failed:
    """Wrong username or password; `failures` in the current window so far."""

    failures: int


_Verdict = Account | _Blocked | _Failed


class SubmissionHandler:
    """aiosmtpd hooks (`handle_*`) and AUTH mechanisms (`auth_*`) of the listener.

    Attribute names starting with `auth_` would become AUTH mechanisms: aiosmtpd collects them.
    """

    def __init__(
        self,
        *,
        accounts: Accounts,
        limiter: AuthFailureLimiter,
        producer: Producer,
        hostname: str,
        max_recipients: int,
    ) -> None:
        self._accounts = accounts
        self._limiter = limiter
        self._producer = producer
        self._hostname = hostname
        self._max_recipients = max_recipients
        self._in_flight = 0
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def close(self) -> None:
        """Take no more messages: DATA gets 421 from now on (the listener is stopping)."""
        self._closing = True

    async def wait_idle(self) -> None:
        """Return once no message is being handed to Mailroom (for a clean shutdown)."""
        await self._idle.wait()

    # --- session ----------------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        return [*responses[:-1], "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return replies.OK

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return replies.OK

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return replies.BYE

    async def handle_VRFY(
        self, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> str:
        return replies.VRFY_CANNOT  # RFC 5321 §3.5.3: never confirm who exists

    async def handle_exception(self, error: Exception) -> str:
        log.error("submission session failed: %s", error, exc_info=error)
        return replies.LOCAL_ERROR

    # --- AUTH -------------------------------------------------------------------------------

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if refusal := await self._refuse_auth(server):
            return refusal
        if len(args) == 1:
            response = await server.challenge_auth("")
            if not isinstance(response, bytes):
                return AuthResult(success=False, handled=True)  # aborted; aiosmtpd replied
        else:
            try:
                response = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return _refused("501 5.5.2 Cannot decode base64")
        parts = response.split(b"\0")
        if len(parts) != 3:
            return _refused("501 5.5.2 Cannot split PLAIN credentials")
        authzid, username, password = parts
        if authzid and authzid != username:
            # RFC 4616 §2: acting as another user is not something any account may do here.
            return _refused(replies.AUTH_INVALID)
        return await self._login(server, "PLAIN", username, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        if refusal := await self._refuse_auth(server):
            return refusal
        if len(args) == 1:
            username = await server.challenge_auth(SMTP.AuthLoginUsernameChallenge)
            if not isinstance(username, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                username = base64.b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                return _refused("501 5.5.2 Cannot decode base64")
        password = await server.challenge_auth(SMTP.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._login(server, "LOGIN", username, password)

    async def _refuse_auth(self, server: SMTP) -> AuthResult | None:
        """A refusal before any credentials are read: no TLS, or an address cut off."""
        if not _tls_active(server):
            # aiosmtpd refuses this already in STARTTLS mode; kept so that no configuration
            # can ever take a password in clear text.
            return _refused(replies.ENCRYPTION_REQUIRED)
        try:
            blocked = await asyncio.to_thread(self._limiter.blocked, _peer_ip(server))
        except redis.RedisError as exc:
            log.warning("AUTH refused, Redis unavailable: %s", exc)
            return _refused(replies.AUTH_UNAVAILABLE)
        if blocked:
            await _hang_up(server, replies.TOO_MANY_FAILURES)
            return AuthResult(success=False, handled=True)
        return None

    async def _login(
        self, server: SMTP, mechanism: str, username: bytes, password: bytes
    ) -> AuthResult:
        peer = _peer_ip(server)
        try:
            verdict = await asyncio.to_thread(self._verify, peer, username, password)
        except redis.RedisError as exc:
            log.warning("AUTH refused, Redis unavailable: %s", exc)
            return _refused(replies.AUTH_UNAVAILABLE)
        match verdict:
            case Account():
                _event("login", peer=peer, account=verdict.username, mechanism=mechanism)
                return AuthResult(success=True, auth_data=verdict)
            case _Blocked():
                await _hang_up(server, replies.TOO_MANY_FAILURES)
                return AuthResult(success=False, handled=True)
            case _Failed(failures=failures):
                # No username: a password typed into the username field would land in the log.
                _event("login_failed", peer=peer, mechanism=mechanism, failures=failures)
                return _refused(replies.AUTH_INVALID)

    def _verify(self, peer: str, username: bytes, password: bytes) -> _Verdict:
        # Counted as a failure before the check: parallel connections from one address would
        # otherwise all pass a "blocked?" test while their passwords are being hashed.
        failures = self._limiter.reserve(peer)
        if failures is None:
            return _Blocked()
        account = self._accounts.verify(username, password)
        if account is None:
            return _Failed(failures)
        self._limiter.release(peer)
        return account

    # --- envelope ---------------------------------------------------------------------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        account = _account(session)
        if account is None:
            return replies.AUTH_REQUIRED
        try:
            sender = parse_mailbox("sender", address)
        except InvalidNotification:
            return replies.BAD_SENDER
        if sender.smtputf8 and not envelope.smtp_utf8:
            return replies.UTF8_NEEDED
        if not account.senders.allows(sender.address):
            _event("sender_refused", peer=_peer_ip(server), account=account.username)
            return replies.SENDER_NOT_ALLOWED
        envelope.mail_from = sender.address
        envelope.mail_options.extend(options)
        return replies.SENDER_OK

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        try:
            recipient = parse_mailbox("recipient", address)
        except InvalidNotification:
            return replies.BAD_RECIPIENT
        if recipient.smtputf8 and not envelope.smtp_utf8:
            return replies.UTF8_NEEDED
        if recipient.address not in envelope.rcpt_tos:
            if len(envelope.rcpt_tos) >= self._max_recipients:
                return replies.TOO_MANY_RECIPIENTS
            envelope.rcpt_tos.append(recipient.address)
            envelope.rcpt_options.extend(options)
        return replies.RECIPIENT_OK

    # --- DATA -------------------------------------------------------------------------------

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._closing:
            return replies.SHUTTING_DOWN
        account = _account(session)
        assert account is not None  # MAIL needs it, and DATA needs MAIL
        sender = str(envelope.mail_from)
        recipients = list(envelope.rcpt_tos)
        message_id = uuid.uuid4().hex
        data = complete(
            envelope.original_content or b"",
            trace=Trace(helo=session.host_name or "", peer_ip=_peer_ip(server), by=self._hostname),
            message_id=message_id,
            id_domain=a_label_domain(sender.rpartition("@")[2]),
            now=datetime.now(UTC),
        )
        smtputf8 = not all(address.isascii() for address in (sender, *recipients))
        message = outbound(message_id, sender, data, smtputf8=smtputf8)
        self._in_flight += 1
        self._idle.clear()
        work = asyncio.ensure_future(asyncio.to_thread(self._submit, message, recipients))
        work.add_done_callback(self._submitted)
        # Shielded: a client that hangs up now does not stop the thread, and a shutdown must
        # wait for it (the message may end up queued; the client, told nothing, sends it again:
        # RFC 5321 §6.1's one ambiguous case).
        accepted = await asyncio.shield(work)
        if not accepted:
            return replies.QUEUE_UNAVAILABLE
        _event(
            "accepted",
            peer=_peer_ip(server),
            account=account.username,
            message_id=message_id,
            recipients=len(recipients),
            bytes=message.size,
        )
        return replies.QUEUED.format(message_id=message_id)

    def _submitted(self, work: asyncio.Future[bool]) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    def _submit(self, message: OutboundMessage, recipients: list[str]) -> bool:
        """Queue the message: True once it is queued, False (nothing deliverable left) if not."""
        message_id = message.message_id
        try:
            self._producer.submit(message, recipients)
        except Exception as exc:
            # redis.RedisError, kombu's OperationalError from Celery's publish, or a bug: the
            # client must keep the message either way, so every failure is a 451.
            if isinstance(exc, redis.RedisError) or type(exc).__module__.startswith("kombu"):
                log.warning("message %s not queued: %s", message_id, exc)
            else:
                log.exception("message %s not queued", message_id)
        else:
            return True
        try:
            # Queued after all (only the reply was lost), or cleared away for the client's retry.
            return not self._producer.withdraw(message_id)
        except redis.RedisError as exc:
            log.warning("message %s: its partial record stays: %s", message_id, exc)
            return False


def _account(session: Session) -> Account | None:
    """The account the session authenticated as, if it did."""
    data: object = session.auth_data  # typed None by aiosmtpd; it holds what AuthResult carried
    return data if session.authenticated and isinstance(data, Account) else None


def _refused(reply: str) -> AuthResult:
    # handled=False with a message: aiosmtpd sends the message as the AUTH reply.
    return AuthResult(success=False, handled=False, message=reply)


async def _hang_up(server: SMTP, reply: str) -> None:
    """Send a 421 and close the connection (RFC 5321 §3.8)."""
    await server.push(reply)
    if server.transport is not None:
        server.transport.close()


def _tls_active(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def _peer_ip(server: SMTP) -> str:
    peer: Any = server.session.peer if server.session is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _event(event: str, **fields: object) -> None:
    """One JSON line per event; never an address, a password or message content."""
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"event": event, **fields}, separators=(",", ":")))
