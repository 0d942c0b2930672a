"""What asking for an access token comes to, as values, and what a provider is asked with.

A secret (client secret, private key, the token itself) is kept out of every repr.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from workers.model.reply import printable

_REASON_CHARS = 300  # a provider's error description, escaped, is cut to this


class Provider(StrEnum):
    MICROSOFT = "microsoft"
    GOOGLE = "google"


@dataclass(frozen=True, slots=True)
class Token:
    """An access token: its `value` (never shown), when it expires (UNIX time), and the scopes
    it grants (a Microsoft token's `roles`/`scp` claims; the scope asked for otherwise)."""

    value: str = field(repr=False)
    expires_at: float
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TokenRefused:
    """The provider refused the credentials: configuration to fix (`hint` says what)."""

    reason: str
    hint: str


@dataclass(frozen=True, slots=True)
class TokenUnavailable:
    """No answer that decides (network, timeout, a provider error): try again later."""

    reason: str


TokenOutcome = Token | TokenRefused | TokenUnavailable


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """Who asks for tokens, for whom and where.

    Microsoft: `authority` (the tenant's, formatted), `client_id` and `secret` (the client
    secret) or `certificate_file` (a certificate credential: its private key and certificate).
    Google: `key_file` (the service account's JSON key; its email and token URI are read from
    it). `subject` is the mailbox (RELAY_USERNAME), `ca_file` an extra CA bundle to
    trust, `timeout` the seconds one token request may take in all.
    """

    provider: Provider
    scope: str
    subject: str
    authority: str = ""
    client_id: str = ""
    secret: str = field(default="", repr=False)
    certificate_file: Path | None = None  # Microsoft: PEM private key and certificate
    key_file: Path | None = None
    ca_file: str | None = None
    timeout: float = 30.0


class Fetcher(Protocol):
    """Asks the provider for a fresh token; blocking (run it in a thread)."""

    def __call__(self, client: OAuthClient) -> TokenOutcome: ...


def shown(text: object) -> str:
    """A provider's words, escaped and cut short, fit for a log line or a status record."""
    return printable(" ".join(str(text).split()), _REASON_CHARS)


def granted_scopes(token: str, asked: str) -> tuple[str, ...]:
    """The scopes a JWT access token grants (`roles` for an application, `scp` for a user),
    read from its payload without verifying it (the relay does); `asked` when it is no JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return (asked,)
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):
        return (asked,)
    if not isinstance(claims, dict):
        return (asked,)
    roles = claims.get("roles")
    if isinstance(roles, list) and roles:
        return tuple(str(role) for role in roles)
    scp = claims.get("scp")
    if isinstance(scp, str) and scp:
        return tuple(scp.split())
    return (asked,)
