"""The token cache a worker process (or `mailroom check`) uses, built from validated settings."""

from __future__ import annotations

import redis

from settings import RelayAuth, Settings
from workers.oauth import google, microsoft
from workers.oauth.cache import TokenCache
from workers.oauth.tokens import Fetcher, OAuthClient, Provider, TokenRefused

# Seconds one HTTP request to a token endpoint may take: the session's command timeout at most.
_HTTP_TIMEOUT = 30.0


def oauth_client(settings: Settings) -> OAuthClient | None:
    """Who asks for the relay's access tokens; None unless RELAY_AUTH is xoauth2 (in force)."""
    if settings.relay_auth_mode is not RelayAuth.XOAUTH2 or settings.relay_username is None:
        return None
    ca_file = None if settings.tls_ca_file is None else str(settings.tls_ca_file)
    timeout = min(_HTTP_TIMEOUT, settings.command_timeout)
    scope = settings.oauth_scope_in_force
    if settings.oauth_google:
        return OAuthClient(
            Provider.GOOGLE,
            scope,
            settings.relay_username,
            key_file=settings.oauth_service_account_file,
            ca_file=ca_file,
            timeout=timeout,
        )
    secret = settings.oauth_client_secret
    return OAuthClient(
        Provider.MICROSOFT,
        scope,
        settings.relay_username,
        authority=settings.oauth_authority.replace("{tenant}", settings.oauth_tenant or ""),
        client_id=settings.oauth_client_id or "",
        secret=secret.get_secret_value() if secret is not None else "",
        certificate_file=settings.oauth_client_certificate_file,
        ca_file=ca_file,
        timeout=timeout,
    )


def fetcher(client: OAuthClient) -> Fetcher:
    """The provider's token request."""
    return google.fetch if client.provider is Provider.GOOGLE else microsoft.fetch


def token_cache(settings: Settings, client: redis.Redis) -> TokenCache | None:
    """The cluster's token cache for the relay; None when the relay does not use XOAUTH2."""
    oauth = oauth_client(settings)
    if oauth is None:
        return None

    def secret() -> tuple[bytes, str] | None:
        if oauth.provider is Provider.MICROSOFT:
            used = microsoft.credential(oauth)
            if isinstance(used, TokenRefused):
                return None
            material = used if isinstance(used, str) else used["private_key"]
            return material.encode(), f"{oauth.authority}|{oauth.client_id}"
        info = google.key_info(oauth)
        if not isinstance(info, dict):
            return None
        return str(info["private_key"]).encode(), f"{info['token_uri']}|{info['client_email']}"

    return TokenCache(client, oauth, fetcher(oauth), secret)
