"""SMTP replies as values: the server's own, and the synthetic ones Mailroom makes up.

Every step of a delivery ends in a `Reply` with a basic code, an RFC 3463 enhanced code and
text, so one classifier (`workers.model.outcome.classify`) and one status format cover server
replies, DNS failures, refused connections, TLS failures and throttling alike. The synthetic
codes follow the choices of Postfix (`smtp_addr.c`, `dsn.h`) and KumoMTA (`smtp_dispatcher.rs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Step(StrEnum):
    """The step of the six-step session a reply belongs to (the numbering is the contract's)."""

    GATE = "gate"  # cluster-wide rate limit or connection cap, before any network traffic
    OPEN_SESSION = "open_session"  # 1: connect, greeting, EHLO/HELO, STARTTLS, EHLO, AUTH
    RESOLVE_MX = "resolve_mx"  # 2: destination -> mail exchangers -> addresses
    MAIL_FROM = "mail_from"  # 3: the envelope sender
    RCPT_TO = "rcpt_to"  # 4: one envelope recipient
    DATA = "data"  # 5: the message itself, up to the reply after the final dot
    QUIT = "quit"  # 6: closing the session; never changes an outcome


class Code(IntEnum):
    """Reply codes Mailroom names (RFC 5321 §4.2.3), so no bare numbers stand in the code."""

    READY = 220
    CLOSING = 221
    AUTH_OK = 235
    OK = 250
    START_INPUT = 354
    SERVICE_UNAVAILABLE = 421
    MAILBOX_BUSY = 450
    LOCAL_ERROR = 451
    INSUFFICIENT_STORAGE = 452
    SYNTAX_ERROR = 500
    NOT_IMPLEMENTED = 502
    BAD_SEQUENCE = 503
    MAILBOX_UNAVAILABLE = 550
    EXCEEDED_STORAGE = 552
    MAILBOX_NAME_INVALID = 553
    TRANSACTION_FAILED = 554
    PARAMETERS_NOT_RECOGNIZED = 555
    DOMAIN_DOES_NOT_ACCEPT_MAIL = 556


# RFC 3463 §2: class.subject.detail, the class matching the basic code's first digit.
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")

# How much of a server's text a reply keeps: RFC 5321 §4.5.3.1.5 allows 512 octets a reply line.
MAX_TEXT = 512
_SURROGATES = range(0xDC80, 0xDD00)  # the bytes surrogateescape could not decode


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: basic code, enhanced code ("" when the server gave none), text, step."""

    code: int
    enhanced: str
    text: str
    step: Step

    @property
    def reply_class(self) -> int:
        """The first digit of the code: 2 success, 3 intermediate, 4 transient, 5 permanent."""
        return self.code // 100

    def __str__(self) -> str:
        return " ".join(part for part in (str(self.code), self.enhanced, self.text) if part)


def parse_reply(code: int, message: str, step: Step) -> Reply:
    """Build a `Reply` from a server's code and text, splitting off the enhanced code.

    Multi-line replies are folded to one line. An enhanced code whose class does not match the
    basic code's class is not an enhanced code (RFC 3463 §2) and stays in the text.
    """
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    match = _ENHANCED.match(text)
    if match is None or int(match.group(1)) != code // 100:
        return Reply(code, "", printable(text), step)
    enhanced = ".".join(match.groups())
    return Reply(code, enhanced, printable(text[match.end() :].strip()), step)


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """`text` safe to show anywhere: control characters (a terminal's escape sequences) and
    undecodable bytes escaped as Python does, cut to `limit` characters with "..." after.

    A server's words end up in status records, logs and on an operator's terminal.
    """
    if len(text) <= limit and text.isprintable():
        return text
    shown = "".join(c if c.isprintable() else _escape(c) for c in text[: limit + 1])
    return shown if len(shown) <= limit and len(text) <= limit else shown[:limit] + "..."


def _escape(char: str) -> str:
    point = ord(char)
    if point in _SURROGATES:
        return f"\\x{point - 0xDC00:02x}"
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


# Synthetic replies, one function per situation Mailroom itself detects.


def no_answer(host: str, detail: str) -> Reply:
    """Connection refused, unreachable or timed out: RFC 3463 X.4.1, no answer from host."""
    return Reply(
        Code.SERVICE_UNAVAILABLE, "4.4.1", f"no answer from {host}: {detail}", Step.OPEN_SESSION
    )


def connection_dropped(host: str, step: Step, detail: str) -> Reply:
    """The server closed the connection or stopped answering mid-session: X.4.2."""
    return Reply(Code.SERVICE_UNAVAILABLE, "4.4.2", f"connection with {host} lost: {detail}", step)


def tls_unavailable(host: str, required_by: str = "") -> Reply:
    """TLS is required but the server does not offer STARTTLS: X.7.4, security not supported.
    `required_by` names what requires it beside the settings (an MTA-STS policy)."""
    return Reply(
        Code.LOCAL_ERROR,
        "4.7.4",
        f"{_by(required_by)}TLS is required but {host} does not offer STARTTLS; nothing was sent",
        Step.OPEN_SESSION,
    )


def tls_failed(host: str, detail: str, required_by: str = "") -> Reply:
    """The TLS handshake or certificate verification failed: X.7.5, cryptographic failure."""
    return Reply(
        Code.SERVICE_UNAVAILABLE,
        "4.7.5",
        f"{_by(required_by)}TLS with {host} failed: {detail}; nothing was sent",
        Step.OPEN_SESSION,
    )


def mta_sts_no_mx(domain: str, hosts: str) -> Reply:
    """The domain's MTA-STS policy (mode enforce, RFC 8461 §4.1) allows none of its MX hosts:
    X.7.0, deferred (the domain may fix its records), never bounced."""
    return Reply(
        Code.LOCAL_ERROR,
        "4.7.0",
        f"MTA-STS policy of {domain} (enforce) allows none of its MX hosts ({hosts});"
        " nothing was sent",
        Step.RESOLVE_MX,
    )


def mta_sts_requirement(domain: str) -> str:
    """What `required_by` says when a domain's MTA-STS policy asks for verified TLS."""
    return f"MTA-STS policy of {domain} (enforce)"


def _by(required_by: str) -> str:
    return f"{required_by}: " if required_by else ""


def dns_temporary(domain: str, detail: str) -> Reply:
    """DNS timeout, SERVFAIL or no reachable nameserver: X.4.3, routing server failure."""
    return Reply(
        Code.LOCAL_ERROR, "4.4.3", f"DNS lookup for {domain} failed: {detail}", Step.RESOLVE_MX
    )


def no_such_domain(domain: str) -> Reply:
    """NXDOMAIN: X.1.2, bad destination system address."""
    return Reply(
        Code.MAILBOX_UNAVAILABLE,
        "5.1.2",
        f"domain {domain} does not exist (NXDOMAIN)",
        Step.RESOLVE_MX,
    )


def null_mx(domain: str) -> Reply:
    """RFC 7505 null MX (`MX 0 .`): the domain accepts no mail, X.1.10."""
    return Reply(
        Code.DOMAIN_DOES_NOT_ACCEPT_MAIL,
        "5.1.10",
        f"domain {domain} does not accept mail (null MX, RFC 7505)",
        Step.RESOLVE_MX,
    )


def no_address(domain: str) -> Reply:
    """The domain exists but neither its MX hosts nor itself have an address: X.4.4."""
    return Reply(
        Code.LOCAL_ERROR,
        "4.4.4",
        f"no address found for the mail exchangers of {domain}",
        Step.RESOLVE_MX,
    )


def denied_network(domain: str) -> Reply:
    """Every address of the domain's mail exchangers is in MX_DENY_NETWORKS: X.7.1, delivery
    not authorized. Permanent, as Postfix bounces mail whose MX loops back to itself: waiting
    does not change the operator's policy."""
    return Reply(
        Code.MAILBOX_UNAVAILABLE,
        "5.7.1",
        f"every mail exchanger of {domain} is in MX_DENY_NETWORKS",
        Step.RESOLVE_MX,
    )


def deadline_exceeded(host: str, step: Step) -> Reply:
    """The whole session ran past its overall deadline: X.4.7, delivery time expired (for now)."""
    return Reply(
        Code.SERVICE_UNAVAILABLE, "4.4.7", f"session with {host} exceeded its deadline", step
    )


def message_too_big(host: str, size: int, limit: int) -> Reply:
    """The server's SIZE limit is below the message's size: X.3.4, message too big for system."""
    return Reply(
        Code.EXCEEDED_STORAGE,
        "5.3.4",
        f"message of {size} bytes exceeds the {limit}-byte limit announced by {host}",
        Step.MAIL_FROM,
    )


def smtputf8_unavailable(host: str) -> Reply:
    """The message needs SMTPUTF8 and the server does not offer it: X.6.7 (RFC 6531 §3.5)."""
    return Reply(
        Code.MAILBOX_NAME_INVALID,
        "5.6.7",
        f"the message needs SMTPUTF8 but {host} does not offer it",
        Step.MAIL_FROM,
    )


def bad_address(step: Step) -> Reply:
    """An address that cannot be written on the wire (a control character, or non-ASCII with
    no SMTPUTF8): X.1.7 for the sender, X.1.3 for a recipient; the address is not repeated."""
    enhanced, whose = ("5.1.7", "sender") if step is Step.MAIL_FROM else ("5.1.3", "recipient")
    return Reply(
        Code.MAILBOX_NAME_INVALID,
        enhanced,
        f"the {whose} address cannot be sent in an SMTP command (control character or encoding)",
        step,
    )


def auth_unavailable(host: str, mechanisms: str = "PLAIN, LOGIN") -> Reply:
    """The relay offers none of the AUTH `mechanisms` Mailroom would use after TLS: X.7.10."""
    return Reply(
        Code.LOCAL_ERROR,
        "4.7.10",
        f"{host} offers no AUTH mechanism Mailroom supports ({mechanisms}); nothing was sent",
        Step.OPEN_SESSION,
    )


def protocol_error(host: str, step: Step, detail: str) -> Reply:
    """The server said something that is no reply, or a reply that fits no command sent: X.5.0.

    Transient: the stream is out of step, so whatever it said cannot be trusted either way.
    `detail` may quote the server; it is escaped and cut here.
    """
    return Reply(
        Code.SERVICE_UNAVAILABLE,
        "4.5.0",
        f"protocol error from {host}: {printable(detail)}",
        step,
    )


def not_attempted(step: Step, reason: str) -> Reply:
    """A recipient that never reached its RCPT TO because the session ended first."""
    return Reply(Code.LOCAL_ERROR, "4.3.0", reason, step)
