"""The token step of `mailroom check` for an XOAUTH2 relay: ask the provider for a token (not the
cluster's cache: the check is about the credentials as configured now) and say what came back
(the endpoint reached, the token's expiry and the scopes it grants) or what to fix. The token
itself is never printed; it is handed to the AUTH step."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from settings import Settings
from workers.model.reply import Reply
from workers.oauth.setup import fetcher, oauth_client
from workers.oauth.tokens import OAuthClient, Provider, Token, TokenOutcome, TokenRefused

_ROLE = "SMTP.SendAsApp"  # the application permission Exchange Online wants for SMTP AUTH


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """Where the token was asked for, and what came back."""

    client: OAuthClient
    outcome: TokenOutcome

    @property
    def endpoint(self) -> str:
        if self.client.provider is Provider.MICROSOFT:
            return self.client.authority
        return str(self.client.key_file)

    @property
    def passed(self) -> bool:
        return isinstance(self.outcome, Token)

    def problem(self) -> str | None:
        """Why the step failed and what fixes it; None when it passed."""
        outcome = self.outcome
        if isinstance(outcome, TokenRefused):
            return f"{outcome.reason}; to fix: {outcome.hint}"
        if isinstance(outcome, Token):
            return None
        return f"the token endpoint gave no token: {outcome.reason}"

    def warning(self) -> str | None:
        """A Microsoft token without the SMTP.SendAsApp role: AUTH will be refused."""
        outcome = self.outcome
        if not isinstance(outcome, Token) or self.client.provider is not Provider.MICROSOFT:
            return None
        if _ROLE in outcome.scopes or outcome.scopes == (self.client.scope,):
            return None
        return f"the token grants no {_ROLE}: add it as an application permission, admin consent"


def token_check(settings: Settings) -> TokenCheck | None:
    """Ask for a token as the relay's XOAUTH2 login would; None for any other relay."""
    client = oauth_client(settings)
    if client is None:
        return None
    bound = client.timeout * 3 + 1
    try:
        outcome = asyncio.run(asyncio.wait_for(asyncio.to_thread(fetcher(client), client), bound))
    except TimeoutError:
        from workers.oauth.tokens import TokenUnavailable

        outcome = TokenUnavailable(f"no token within {bound:g} s")
    return TokenCheck(client, outcome)


def token_line(check: TokenCheck) -> list[str]:
    """The report's token lines: one for the step, one more for a warning."""
    outcome, client = check.outcome, check.client
    where = f"{check.endpoint} ({client.provider.value}, for {client.subject})"
    if not isinstance(outcome, Token):
        return [f"{'token':<12} FAIL  {where}: {check.problem()}"]
    left = max(outcome.expires_at - time.time(), 0)
    lines = [
        f"{'token':<12} ok    {where}: token acquired, expires {_iso(outcome.expires_at)}"
        f" (in {left / 60:.0f} min), scopes {' '.join(outcome.scopes)}"
    ]
    if (warning := check.warning()) is not None:
        lines.append(f"{'token':<12} WARN  {warning}")
    return lines


def token_json(check: TokenCheck) -> dict[str, Any]:
    outcome = check.outcome
    shown: dict[str, Any] = {
        "ok": check.passed,
        "provider": check.client.provider.value,
        "endpoint": check.endpoint,
        "subject": check.client.subject,
        "scope": check.client.scope,
    }
    if isinstance(outcome, Token):
        shown.update(expires=_iso(outcome.expires_at), scopes=list(outcome.scopes))
        shown["warning"] = check.warning()
    else:
        shown["error"] = check.problem()
    return shown


def auth_fix(reply: Reply, check: TokenCheck | None) -> str | None:
    """What to do about a refused AUTH, for the report's last line."""
    from workers.delivery.relay_access import fix_for

    provider = None if check is None else check.client.provider
    return fix_for(reply, provider)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
