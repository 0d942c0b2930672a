"""A Microsoft 365 access token for SMTP AUTH XOAUTH2: the client credentials grant, with msal.

msal's ConfidentialClientApplication discovers the tenant's endpoints
(`{authority}/v2.0/.well-known/openid-configuration`) and POSTs the client credentials to the
token endpoint. A fresh application per request: msal would otherwise answer from its own
in-memory cache, and a token the relay refused must really be replaced. Instance discovery and
authority validation (a GET to login.microsoftonline.com) are turned off only for an authority
of another host (a sovereign cloud, the tests' local server).
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

import msal
import requests

from workers.oauth.http import BoundedSession
from workers.oauth.tokens import (
    OAuthClient,
    Token,
    TokenOutcome,
    TokenRefused,
    TokenUnavailable,
    granted_scopes,
    shown,
)

MICROSOFT_HOST = "login.microsoftonline.com"
_MAX_PEM_FILE = 65536
_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.+?-----END (?:RSA |EC |ENCRYPTED )?"
    r"PRIVATE KEY-----",
    re.DOTALL,
)
_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)

# Entra (AADSTS) codes and OAuth errors that are configuration, each with the fix it asks for.
_FIXES = (
    ("AADSTS7000215", "OAUTH_CLIENT_SECRET is wrong: copy the secret's Value (not its ID)"),
    ("AADSTS7000222", "the client secret expired: add a new one under Certificates & secrets"),
    ("AADSTS700027", "the certificate is not one of the application's: upload it (Certificates)"),
    ("AADSTS700016", "OAUTH_CLIENT_ID is not an application of tenant OAUTH_TENANT"),
    ("AADSTS90002", "OAUTH_TENANT is no known tenant (use its directory ID or domain)"),
    ("AADSTS65001", "grant admin consent for the application's SMTP.SendAsApp permission"),
    ("AADSTS70011", "OAUTH_SCOPE is invalid: use https://outlook.office365.com/.default"),
    ("AADSTS7000112", "the application is disabled in the tenant"),
    ("invalid_client", "check OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET"),
    ("unauthorized_client", "the application may not use client credentials in this tenant"),
    ("invalid_scope", "OAUTH_SCOPE is invalid: use https://outlook.office365.com/.default"),
    ("invalid_request", "check OAUTH_TENANT, OAUTH_CLIENT_ID and OAUTH_SCOPE"),
    ("invalid_grant", "check the application's credentials and consent"),
)


def credential(client: OAuthClient) -> str | dict[str, str] | TokenRefused:
    """msal's client credential: the secret, or the certificate file's private key and
    certificate (msal signs its assertion with the key, naming the certificate's SHA-256
    thumbprint); what is wrong with the file otherwise."""
    path = client.certificate_file
    if path is None:
        return client.secret
    fix = "OAUTH_CLIENT_CERTIFICATE_FILE must hold the private key and the certificate (PEM)"
    try:
        with path.open("rb") as file:
            text = file.read(_MAX_PEM_FILE).decode("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        return TokenRefused(f"cannot read '{path}': {shown(exc)}", fix)
    key = _PRIVATE_KEY.search(text)
    certificate = _CERTIFICATE.search(text)
    if key is None or certificate is None:
        return TokenRefused(f"'{path}' lacks a private key or a certificate", fix)
    return {"private_key": key.group(0), "public_certificate": certificate.group(0)}


def fetch(client: OAuthClient) -> TokenOutcome:
    """Ask Entra ID for an application token; blocking, bounded by `client.timeout` per
    HTTP request."""
    custom = urlsplit(client.authority).hostname != MICROSOFT_HOST
    client_credential = credential(client)
    if isinstance(client_credential, TokenRefused):
        return client_credential
    session = BoundedSession(client.ca_file, client.timeout)
    try:
        app = msal.ConfidentialClientApplication(
            client.client_id,
            client_credential=client_credential,
            authority=client.authority,
            validate_authority=not custom,
            instance_discovery=None if not custom else False,
            http_client=session,
            token_cache=msal.TokenCache(),
        )
        answer: dict[str, Any] = app.acquire_token_for_client(scopes=[client.scope])
    except ValueError as exc:
        # msal's tenant discovery got a 4xx: the tenant or the authority is wrong.
        return TokenRefused(
            f"authority {client.authority} refused the tenant discovery: {shown(exc)}",
            "check OAUTH_TENANT and OAUTH_AUTHORITY",
        )
    except (requests.RequestException, OSError) as exc:
        return TokenUnavailable(f"{urlsplit(client.authority).netloc}: {shown(exc)}")
    finally:
        session.close()
    return outcome(answer, client.scope)


def outcome(answer: dict[str, Any], asked: str) -> TokenOutcome:
    """msal's answer as a value: a token, or the error with the fix it asks for."""
    value = answer.get("access_token")
    if isinstance(value, str) and value:
        lifetime = float(answer.get("expires_in") or 0)
        return Token(value, time.time() + lifetime, granted_scopes(value, asked))
    error = str(answer.get("error") or "no_token")
    description = str(answer.get("error_description") or "")
    reason = shown(f"{error}: {description}" if description else error)
    for marker, fix in _FIXES:
        if marker in error or marker in description:
            return TokenRefused(reason, fix)
    return TokenUnavailable(reason)
