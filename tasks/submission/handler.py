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

import uuid
from datetime import UTC, datetime

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from tasks.notification import InvalidNotification, a_label_domain, parse_mailbox
from tasks.submission import replies
from tasks.submission.accounts import Accounts
from tasks.submission.auth_limits import AuthFailureLimiter
from tasks.submission.events import account_of, event, log, peer_ip
from tasks.submission.handoff import Handoff, Producer
from tasks.submission.headers import Trace, complete
from tasks.submission.label_headers import take_labels
from tasks.submission.login import Authenticator
from workers.model.envelope import outbound

__all__ = ["Producer", "SubmissionHandler"]


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
        self._auth = Authenticator(accounts, limiter)
        self._handoff = Handoff(producer)
        self._hostname = hostname
        self._max_recipients = max_recipients

    def close(self) -> None:
        """Take no more messages: DATA gets 421 from now on (the listener is stopping)."""
        self._handoff.close()

    async def wait_idle(self) -> None:
        """Return once no message is being handed to Mailroom (for a clean shutdown)."""
        await self._handoff.wait_idle()

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
        return await self._auth.plain(server, args)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._auth.login(server, args)

    # --- envelope ---------------------------------------------------------------------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        account = account_of(session)
        if account is None:
            return replies.AUTH_REQUIRED
        try:
            sender = parse_mailbox("sender", address)
        except InvalidNotification:
            return replies.BAD_SENDER
        if sender.smtputf8 and not envelope.smtp_utf8:
            return replies.UTF8_NEEDED
        if not account.senders.allows(sender.address):
            event("sender_refused", peer=peer_ip(server), account=account.username)
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
        if self._handoff.closing:
            return replies.SHUTTING_DOWN
        account = account_of(session)
        assert account is not None  # MAIL needs it, and DATA needs MAIL
        sender = str(envelope.mail_from)
        recipients = list(envelope.rcpt_tos)
        message_id = uuid.uuid4().hex
        try:
            original, labels = take_labels(envelope.original_content or b"")
        except InvalidNotification as exc:
            return replies.BAD_LABELS.format(problem=exc)
        data = complete(
            original,
            trace=Trace(helo=session.host_name or "", peer_ip=peer_ip(server), by=self._hostname),
            message_id=message_id,
            id_domain=a_label_domain(sender.rpartition("@")[2]),
            now=datetime.now(UTC),
        )
        smtputf8 = not all(address.isascii() for address in (sender, *recipients))
        message = outbound(message_id, sender, data, smtputf8=smtputf8)
        if not await self._handoff.queue(message, recipients, labels):
            return replies.QUEUE_UNAVAILABLE
        event(
            "accepted",
            peer=peer_ip(server),
            account=account.username,
            message_id=message_id,
            recipients=len(recipients),
            bytes=message.size,
        )
        return replies.QUEUED.format(message_id=message_id)
