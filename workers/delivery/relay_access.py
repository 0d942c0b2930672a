"""The relay's account for each delivery, and the hold when it stops working.

Before a relay delivery opens a session, `RelayAccess.admit` says whether it may go (the relay
may be held, `workers.traffic.relay_hold`) and with which login: the Basic account, or the
mailbox with an access token from the cluster's cache (`workers.oauth.cache`). After the
session, `settle` reads the AUTH reply: a refused token (535 5.7.3 / 5.7.8) is replaced once
and the part tried again; a second refusal, a refused token request, Basic AUTH refused or
turned off (550 5.7.30) hold the relay. Held deliveries are deferred at the gate (no attempt
spent) until the next probe time; the probe that authenticates lifts the hold. Failures are the
operator's to fix: nothing is bounced for them, and MAX_AGE still expires what waits too long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from redis import RedisError

from workers.delivery.gate import blocking
from workers.model.outcome import Deferred, Delivered, Outcome
from workers.model.reply import Code, Reply, Step
from workers.model.report import DeliveryReport, StepRecord
from workers.oauth.tokens import Provider, Token, TokenOutcome, TokenRefused
from workers.smtp.peer import BearerCredentials, Login
from workers.traffic.relay_hold import DEFAULT_PROBE_INTERVAL, Hold, held_reply

log = logging.getLogger(__name__)
_T = TypeVar("_T")

HOLD_RECHECK = 1.0  # seconds a worker trusts what it last read of the hold record
_REFUSED = frozenset({"5.7.3", "5.7.8"})  # the credentials (the token) were refused
_AUTH_FAILED = 535
_BASIC_OFF = "5.7.30"  # Exchange Online: Basic authentication is turned off

_MICROSOFT_FIX = (
    "grant admin consent for SMTP.SendAsApp, register the application in Exchange Online"
    " (New-ServicePrincipal) and give it the mailbox (Add-MailboxPermission); see README"
)
_BASIC_FIX = "check MAILROOM_RELAY_USERNAME and MAILROOM_RELAY_PASSWORD"
_BASIC_OFF_FIX = (
    "Basic AUTH is turned off for this mailbox or tenant (Microsoft ends it in December 2026):"
    " set MAILROOM_RELAY_AUTH=xoauth2 with the OAUTH_* settings; see README"
)
_GOOGLE_FIX = (
    "authorize the service account for https://mail.google.com/ under domain-wide delegation"
    " and check that RELAY_USERNAME is a user of the domain; see README"
)


class HoldStore(Protocol):
    """The hold record in Redis (`workers.traffic.relay_hold.RelayHolds`): blocking calls."""

    probe_interval: float

    def current(self) -> Hold | None: ...

    def hold(self, reason: str, hint: str) -> bool: ...

    def lift(self) -> bool: ...

    def take_probe(self) -> bool: ...

    def probe_in(self) -> float: ...


class TokenSource(Protocol):
    """The cluster's access token (`workers.oauth.cache.TokenCache`)."""

    async def token(self) -> TokenOutcome: ...

    async def renew(self, used: Token) -> TokenOutcome: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """Go, with `login`; `token` is the access token in it; `probe`: the relay is held and this
    delivery is the one that tries it; `renewed`: the token already replaced one refused."""

    login: Login | None
    token: Token | None = None
    probe: bool = False
    renewed: bool = False


@dataclass(frozen=True, slots=True)
class Waiting:
    """Not now: every recipient waits `retry_after` seconds with `reply` (no attempt made)."""

    reply: Reply
    retry_after: float


class RelayAccess:
    """Admits relay deliveries and holds the relay; one per worker process."""

    def __init__(
        self,
        username: str,
        holds: HoldStore | None,
        *,
        basic: Login | None = None,
        tokens: TokenSource | None = None,
        provider: Provider | None = None,
    ) -> None:
        self._username = username
        self._holds = holds
        self._basic = basic
        self._tokens = tokens
        self._provider = provider
        self._seen: tuple[Hold | None, float] = (None, float("-inf"))  # last read, when

    async def admit(self, *, probe: bool = False) -> Admitted | Waiting:
        """Whether a relay delivery may go now, and with which login. `probe` (`mailroom
        check`) goes whatever the hold says and never changes it."""
        trying = False
        if not probe:
            hold = await self._hold()
            if hold is not None and self._holds is not None:
                trying = await self._safely(self._holds.take_probe, False)
                if not trying:
                    return self._held(hold)
        if self._tokens is None:
            return Admitted(self._basic, probe=trying)
        got = await self._tokens.token()
        return await self._with_token(got, trying, renewed=False, probe=probe)

    async def settle(
        self, admitted: Admitted, report: DeliveryReport, *, probe: bool = False
    ) -> Admitted | DeliveryReport:
        """What a session's report means for the relay: a fresh token to try once more (an
        `Admitted`), or the report to record (turned into a wait when the relay is now held)."""
        refused = auth_refusal(report)
        if refused is None:
            if not probe and (admitted.probe or self._seen[0] is not None) and _got_in(report):
                await self._lift()
            return report
        if refused.enhanced == _BASIC_OFF:
            return await self._hold_report(
                report, f"AUTH refused: {refused}", _BASIC_OFF_FIX, probe
            )
        if refused.reply_class != 5:
            return report  # a temporary refusal (454): an ordinary deferral
        token = admitted.token
        renewable = refused.enhanced in _REFUSED or refused.code == _AUTH_FAILED
        if token is not None and self._tokens is not None and not admitted.renewed and renewable:
            got = await self._tokens.renew(token)
            renewed = await self._with_token(got, admitted.probe, renewed=True, probe=probe)
            if isinstance(renewed, Admitted):
                return renewed
            return _waiting_report(report, renewed)
        fix = fix_for(refused, None if token is None else self._provider) or _BASIC_FIX
        return await self._hold_report(report, f"AUTH refused: {refused}", fix, probe)

    async def _with_token(
        self, got: TokenOutcome, trying: bool, *, renewed: bool, probe: bool
    ) -> Admitted | Waiting:
        if isinstance(got, Token):
            return Admitted(BearerCredentials(self._username, got.value), got, trying, renewed)
        if isinstance(got, TokenRefused):
            reason = f"the token endpoint refused the credentials: {got.reason}"
            if not probe:
                await self._hold_relay(reason, got.hint)
            return self._held(Hold(reason, got.hint, time.time()))
        wait = self._interval()
        text = f"no access token for the relay ({got.reason}); next try in {wait:g} s"
        return Waiting(Reply(Code.LOCAL_ERROR, "4.4.1", text, Step.GATE), wait)

    def _held(self, hold: Hold) -> Waiting:
        wait = self._interval()
        return Waiting(held_reply(hold, wait), wait)

    async def _hold_report(
        self, report: DeliveryReport, reason: str, hint: str, probe: bool
    ) -> DeliveryReport:
        if probe:
            return report
        await self._hold_relay(reason, hint)
        return _waiting_report(report, self._held(Hold(reason, hint, time.time())))

    async def _hold_relay(self, reason: str, hint: str) -> None:
        holds = self._holds
        if holds is None:
            return
        new = await self._safely(lambda: holds.hold(reason, hint), False)
        self._seen = (Hold(reason, hint, time.time()), asyncio.get_running_loop().time())
        if new:
            log.error(
                "relay held: %s; to fix: %s; relay deliveries wait (nothing is bounced) and"
                " resume by themselves once a try (one every %g s) authenticates",
                reason,
                hint,
                holds.probe_interval,
            )

    async def _lift(self) -> None:
        holds = self._holds
        if holds is None:
            return
        lifted = await self._safely(holds.lift, False)
        self._seen = (None, asyncio.get_running_loop().time())
        if lifted:
            log.warning("relay hold lifted: the relay accepted the login again")

    async def _hold(self) -> Hold | None:
        """The hold in force, as this worker last read it (at most HOLD_RECHECK ago)."""
        holds = self._holds
        if holds is None:
            return None
        now = asyncio.get_running_loop().time()
        seen, at = self._seen
        if now - at < HOLD_RECHECK:
            return seen
        current = await self._safely(holds.current, seen)
        self._seen = (current, now)
        return current

    def _interval(self) -> float:
        return self._holds.probe_interval if self._holds is not None else DEFAULT_PROBE_INTERVAL

    async def _safely(self, call: Callable[[], _T], otherwise: _T) -> _T:
        try:
            return await blocking(call)
        except RedisError as exc:
            log.warning("the relay's hold record did not answer: %s", exc)
            return otherwise


def fix_for(refused: Reply, provider: Provider | None) -> str | None:
    """What fixes a relay's refusal of AUTH (`provider` None: Basic AUTH); None for a reply that
    is no refusal of the login."""
    if refused.enhanced == _BASIC_OFF:
        return _BASIC_OFF_FIX
    if refused.reply_class != 5:
        return None
    if provider is None:
        return _BASIC_FIX
    return _GOOGLE_FIX if provider is Provider.GOOGLE else _MICROSOFT_FIX


def auth_refusal(report: DeliveryReport) -> Reply | None:
    """The server's reply to AUTH, when it refused the login in one of the report's attempts."""
    for attempt in report.attempts:
        for step in attempt.steps:
            if step.command.startswith("AUTH ") and step.reply.reply_class in (4, 5):
                return step.reply
    return None


def _got_in(report: DeliveryReport) -> bool:
    """The relay let the session in: a login accepted, or a transaction under way."""
    for attempt in report.attempts:
        for step in attempt.steps:
            reply = step.reply
            if step.command.startswith("AUTH ") and reply.reply_class == 2:
                return True
            if reply.step in (Step.MAIL_FROM, Step.RCPT_TO, Step.DATA):
                return True
    return any(isinstance(o, Delivered) for o in report.outcomes)


def _waiting_report(report: DeliveryReport, waiting: Waiting) -> DeliveryReport:
    """`report`'s attempts kept (the status shows the refused AUTH), its undelivered recipients
    waiting for the next try of the relay."""
    outcomes: tuple[Outcome, ...] = tuple(
        Deferred(o.recipient, waiting.reply, waiting.retry_after) if isinstance(o, Deferred) else o
        for o in report.outcomes
    )
    return replace(report, outcomes=outcomes)


def waiting_report(destination: str, recipients: Sequence[str], waiting: Waiting) -> DeliveryReport:
    """A delivery that may not go now: every recipient waits, and no attempt was made."""
    outcomes = tuple(Deferred(r, waiting.reply, waiting.retry_after) for r in recipients)
    return DeliveryReport(destination, outcomes, StepRecord("gate", waiting.reply, 0.0), ())
