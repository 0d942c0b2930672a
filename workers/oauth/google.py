"""A Google Workspace access token for SMTP AUTH XOAUTH2: a service account with domain-wide
delegation, with google-auth.

The key file is read on every request, so a key fixed on disk is used by the next try. Its
`token_uri` is where the signed assertion (RFC 7523, RS256) goes, `subject` the mailbox. HTTP
goes through a requests session that trusts TLS_CA_FILE as well, with a bounded timeout.
"""

from __future__ import annotations

import json
import time
from datetime import UTC
from typing import Any

import requests
from google.auth import exceptions
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from workers.oauth.http import BoundedSession
from workers.oauth.tokens import (
    OAuthClient,
    Token,
    TokenOutcome,
    TokenRefused,
    TokenUnavailable,
    shown,
)

_MAX_KEY_FILE = 65536
_DEFAULT_LIFETIME = 3600.0  # Google's tokens live an hour when the answer does not say

_FIXES = (
    (
        "unauthorized_client",
        "authorize the service account's client ID for https://mail.google.com/ under"
        " domain-wide delegation (Admin console: Security > API controls)",
    ),
    ("invalid_grant", "check the key file (a deleted key?) and that RELAY_USERNAME is a user"),
    ("access_denied", "the mailbox RELAY_USERNAME may not be used by this service account"),
    ("invalid_scope", "OAUTH_SCOPE must be https://mail.google.com/"),
)


def key_info(client: OAuthClient) -> dict[str, Any] | TokenRefused:
    """The service account's key file, parsed; what is wrong with it otherwise."""
    path = client.key_file
    if path is None:
        return TokenRefused("no service account key file", "set OAUTH_SERVICE_ACCOUNT_FILE")
    try:
        with path.open("rb") as file:
            info = json.loads(file.read(_MAX_KEY_FILE))
    except (OSError, ValueError) as exc:
        return TokenRefused(
            f"cannot read the key file '{path}': {shown(exc)}",
            "OAUTH_SERVICE_ACCOUNT_FILE must be the service account's JSON key",
        )
    fields = ("client_email", "private_key", "token_uri")
    if not isinstance(info, dict) or not all(isinstance(info.get(f), str) for f in fields):
        return TokenRefused(
            f"the key file '{path}' lacks client_email, private_key or token_uri",
            "OAUTH_SERVICE_ACCOUNT_FILE must be the service account's JSON key",
        )
    return info


def fetch(client: OAuthClient) -> TokenOutcome:
    """Ask Google's token endpoint for a delegated token; blocking, each HTTP request bounded
    by `client.timeout`."""
    info = key_info(client)
    if isinstance(info, TokenRefused):
        return info
    try:
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[client.scope], subject=client.subject
        )
    except ValueError as exc:
        return TokenRefused(
            f"the key file's private key is unusable: {shown(exc)}",
            "download a new JSON key for the service account",
        )
    session = BoundedSession(client.ca_file, client.timeout)
    try:
        credentials.refresh(Request(session))
    except exceptions.RefreshError as exc:
        return _refused(exc)
    except (exceptions.TransportError, requests.RequestException, OSError) as exc:
        return TokenUnavailable(f"{info['token_uri']}: {shown(exc)}")
    finally:
        session.close()
    token = credentials.token
    if not isinstance(token, str) or not token:
        return TokenUnavailable("the token endpoint answered without a token")
    expiry = credentials.expiry  # naive UTC, as google-auth keeps it
    if expiry is None:
        expires_at = time.time() + _DEFAULT_LIFETIME
    else:
        expires_at = expiry.replace(tzinfo=UTC).timestamp()
    return Token(token, expires_at, (client.scope,))


def _refused(exc: exceptions.RefreshError) -> TokenOutcome:
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    error = str(data.get("error") or "")
    description = str(data.get("error_description") or "")
    reason = shown(f"{error}: {description}" if error else exc.args[0] if exc.args else exc)
    if getattr(exc, "retryable", False):
        return TokenUnavailable(reason)
    for marker, fix in _FIXES:
        if marker in error or marker in reason:
            return TokenRefused(reason, fix)
    return TokenUnavailable(reason)
