"""`mailroom check [--domain D] [--send-to ADDR] [--from ADDR] [--json]`: is this deployment able
to deliver?

Checks, in order: settings (already loaded by `tasks.cli.main`), Redis (PING), for an XOAUTH2
relay the token (`tasks.cli.check_token`: endpoint reached, token acquired, its expiry and scopes,
or the fix), then one real delivery through the production engine (`workers.delivery.agent`) to
the relay, or to domain D's MX hosts: DNS, connect, TLS certificate, AUTH, MAIL FROM, RCPT.
Without `--send-to` the session is a probe that stops after RCPT TO and sends no message,
addressed to `postmaster` (RFC 5321 §4.5.1 requires every domain to accept it). Every step is
printed with its reply; the last line names the step that failed and why. Exit 0 when everything
passed, 1 when a check failed, 2 for bad input. Secrets (the relay password, the OAuth client
secret and token, a Redis password) are never printed.

`--sender-domain D` checks something else: D's DNS records for senders (SPF, DKIM, DMARC,
MTA-STS, TLS-RPT), in `tasks.cli.check_sender`; Redis and SMTP are not contacted then.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis

from settings import DeliveryMode, Settings
from settings.settings import redact_url
from tasks.cli.check_report import as_json, as_lines
from tasks.cli.errors import FAILED, OK, UsageError
from tasks.message import build_message
from tasks.notification import InvalidNotification, Notification, parse_mailbox
from tasks.routing import destination_of
from workers.model.envelope import OutboundMessage
from workers.model.outcome import Delivered
from workers.oauth.tokens import Token

if TYPE_CHECKING:
    from tasks.cli.check_token import TokenCheck
    from workers.model.report import DeliveryReport

SUBJECT = "Mailroom check"
_TEXT = (
    "This is a test message sent by `mailroom check --send-to`.\n"
    "It shows that Mailroom can deliver mail to this address; no reply is needed.\n"
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `check` command."""
    parser = commands.add_parser(
        "check",
        help="check settings, Redis and the delivery path (relay or a domain's MX)",
        description="Check settings, Redis, and the relay (or domain D's MX): DNS, connect, "
        "TLS certificate, AUTH, MAIL FROM, RCPT. Sends a real message only with --send-to. "
        "Exit 0 when every step passes, 1 when one fails (the last line says which and why). "
        "With --sender-domain D, check D's DNS records for senders instead.",
    )
    parser.add_argument("--domain", metavar="D", help="check the MX hosts of D (MX mode)")
    parser.add_argument(
        "--send-to", metavar="ADDR", help="send a real test message to ADDR (else stop at RCPT)"
    )
    parser.add_argument(
        "--from",
        dest="sender",
        metavar="ADDR",
        help="envelope sender (default: postmaster@MAILROOM_HELO_NAME)",
    )
    parser.add_argument(
        "--sender-domain",
        metavar="D",
        action=_SenderDomain,
        help="instead, check D's DNS records for senders: SPF, DKIM, DMARC, MTA-STS, TLS-RPT",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


class _SenderDomain(argparse.Action):
    """Stores --sender-domain D; that check uses no Redis, so `--verbose` names none."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.uses_redis = False


@dataclass(frozen=True, slots=True)
class Plan:
    """What the check delivers, worked out (and validated) before anything is contacted."""

    destination: str  # a recipient domain, or "relay"
    recipient: str
    message: OutboundMessage
    probe: bool  # stop after RCPT TO: nothing is sent


@dataclass(frozen=True, slots=True)
class RedisCheck:
    """The result of PING against MAILROOM_REDIS_URL; `url` has no password."""

    url: str
    error: str | None


@dataclass(frozen=True, slots=True)
class Checked:
    """Everything the check found: Redis, the token (XOAUTH2 relays), and the delivery (none
    when no token could be had)."""

    plan: Plan
    redis: RedisCheck
    token: TokenCheck | None
    report: DeliveryReport | None

    @property
    def passed(self) -> bool:
        if self.redis.error is not None or self.report is None:
            return False
        [outcome] = self.report.outcomes
        return isinstance(outcome, Delivered)


async def _deliver(settings: Settings, plan: Plan, token: Token | None) -> DeliveryReport:
    from workers.delivery.agent import (
        DeliveryAgent,  # aiosmtplib and dnspython: the `worker` extra
    )
    from workers.delivery.setup import agent_config
    from workers.smtp.peer import BearerCredentials

    config = agent_config(settings)
    if token is not None and settings.relay_username:
        # The token the check just got is the AUTH step's login, not the cluster's cached one.
        config = config.with_relay_login(BearerCredentials(settings.relay_username, token.value))
    agent = DeliveryAgent(config)
    try:
        return await agent.deliver(
            plan.message, plan.destination, [plan.recipient], probe=plan.probe
        )
    finally:
        await agent.close()  # a --send-to session's parked connection gets its QUIT


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the checks and print them; return 0 if all passed, 1 if one failed.

    :raises UsageError: bad --domain/--send-to/--from, or no destination in MX mode.
    """
    if args.sender_domain is not None:
        from tasks.cli.check_sender import run_sender_domain  # dnspython: the `worker` extra

        return run_sender_domain(args, settings)
    plan = make_plan(settings, domain=args.domain, send_to=args.send_to, sender=args.sender)
    redis_check = check_redis(settings.redis_url, settings.redis_timeout)
    from tasks.cli.check_token import token_check  # msal and google-auth: the `worker` extra

    token = token_check(settings) if settings.delivery is DeliveryMode.RELAY else None
    secrets = _secrets(settings)
    if token is not None and isinstance(token.outcome, Token):
        secrets.append(token.outcome.value)
    report = None
    if token is None or isinstance(token.outcome, Token):
        login = None if token is None or not isinstance(token.outcome, Token) else token.outcome
        report = asyncio.run(_deliver(settings, plan, login))
    checked = Checked(plan, redis_check, token, report)
    if args.json:
        print(_scrub(json.dumps(as_json(settings, checked)), secrets))
    else:
        for line in as_lines(settings, checked):
            print(_scrub(line, secrets))
    return OK if checked.passed else FAILED


def make_plan(
    settings: Settings, *, domain: str | None, send_to: str | None, sender: str | None
) -> Plan:
    """Choose destination, recipient, sender and message from the options and the mode.

    :raises UsageError: an invalid address or domain, MX mode with neither --domain nor
        --send-to, or --send-to outside --domain in MX mode.
    """
    relay = settings.delivery is DeliveryMode.RELAY
    if send_to is None and domain is None and not relay:
        raise UsageError("check: --domain D (or --send-to ADDR) is required in MX mode")
    postmaster = f"postmaster@{domain or settings.helo_name}"
    fields = {
        "sender": sender or f"postmaster@{settings.helo_name}",
        "to": [send_to or postmaster],
        "subject": SUBJECT,
        "text": _TEXT,
    }
    # Problems are reported against what the operator typed (or the setting behind a default).
    source = {
        "sender": "--from" if sender else "MAILROOM_HELO_NAME (the default --from)",
        "to[0]": "--send-to" if send_to else "--domain" if domain else "MAILROOM_HELO_NAME",
        "--domain": "--domain",
    }
    try:
        wanted = None if domain is None else parse_mailbox("--domain", postmaster).domain
        notification = Notification.validate_dict(fields)
        # The sender's domain makes a valid Message-ID even when the HELO name is an address
        # literal, which build_message refuses.
        message = build_message(
            notification,
            message_id=uuid.uuid4().hex,
            helo_domain=notification.sender_mailbox.domain,
            max_bytes=settings.max_message_bytes,
        )
    except InvalidNotification as exc:
        field, _, problem = str(exc).partition(": ")
        raise UsageError(f"check: {source.get(field, field)}: {problem}") from None
    [mailbox] = notification.to_mailboxes
    if not relay and wanted is not None and wanted != mailbox.domain:
        raise UsageError(f"check: --send-to {mailbox.address} is not in --domain {domain}")
    destination = destination_of(mailbox.address, settings.delivery.value, settings.routes)
    return Plan(destination, mailbox.address, message, probe=send_to is None)


def check_redis(url: str, timeout: float) -> RedisCheck:
    """PING Redis at `url` (MAILROOM_REDIS_TIMEOUT); the error, if any, is one line without the
    password."""
    shown = redact_url(url)
    password = urlsplit(url).password
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return RedisCheck(shown, _scrub(detail, [password] if password else []))
    return RedisCheck(shown, None)


def _secrets(settings: Settings) -> list[str]:
    found = [settings.relay_password.get_secret_value()] if settings.relay_password else []
    if settings.oauth_client_secret is not None:
        found.append(settings.oauth_client_secret.get_secret_value())
    if password := urlsplit(settings.redis_url).password:
        found.append(password)
    return [secret for secret in found if secret]


def _scrub(text: str, secrets: list[str]) -> str:
    """Belt and braces: no server reply or library message may echo a secret back to us."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
