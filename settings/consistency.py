"""The checks between settings: each value may be valid alone and still contradict another
(relay mode without a host, a session longer than the visibility timeout, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from settings.choices import DeliveryMode, RelayAuth
from settings.errors import SettingsError, env_name
from settings.routes import HopKind

if TYPE_CHECKING:
    from settings.settings import Settings


def check_consistent(settings: Settings) -> None:
    """Raise SettingsError naming the first setting that contradicts another."""
    if settings.delivery is DeliveryMode.RELAY and settings.relay_host is None:
        raise SettingsError(env_name("relay_host"), "required when MAILROOM_DELIVERY=relay")
    relayed = sorted(key for key, route in settings.routes.items() if route.kind is HopKind.RELAY)
    if relayed and settings.relay_host is None:
        raise SettingsError(
            env_name("relay_host"), f"required when MAILROOM_ROUTES sends {relayed[0]!r} to relay"
        )
    if settings.relay_auth_mode is RelayAuth.XOAUTH2:
        _check_oauth(settings)
    else:
        _check_basic(settings)
    if settings.session_timeout >= settings.visibility_timeout:
        raise SettingsError(
            env_name("session_timeout"),
            f"must be less than MAILROOM_VISIBILITY_TIMEOUT ({settings.visibility_timeout})"
            f" (got {settings.session_timeout:g})",
        )
    for name in ("content_ttl", "status_ttl"):
        kept = getattr(settings, name)
        # A deferred delivery needs both until MAX_AGE expires it.
        if kept is not None and kept <= settings.max_age:
            raise SettingsError(
                env_name(name),
                f"must be more than MAILROOM_MAX_AGE ({settings.max_age}) (got {kept})",
            )
    if not settings.flower_listen.is_loopback and settings.flower_basic_auth is None:
        raise SettingsError(
            env_name("flower_basic_auth"),
            "required when MAILROOM_FLOWER_LISTEN is not a loopback address"
            f" (got '{settings.flower_listen}')",
        )


def _check_basic(settings: Settings) -> None:
    if settings.relay_username is not None and settings.relay_password is None:
        raise SettingsError(
            env_name("relay_password"), "required when MAILROOM_RELAY_USERNAME is set"
        )
    if settings.relay_password is not None and settings.relay_username is None:
        raise SettingsError(
            env_name("relay_username"), "required when MAILROOM_RELAY_PASSWORD is set"
        )


def _check_oauth(settings: Settings) -> None:
    """XOAUTH2 needs the mailbox (RELAY_USERNAME) and the provider's credentials."""
    why = "required when MAILROOM_RELAY_AUTH=xoauth2"
    if settings.relay_username is None:
        raise SettingsError(env_name("relay_username"), f"{why} (the mailbox mail is sent as)")
    if settings.oauth_google:
        if settings.oauth_service_account_file is None:
            raise SettingsError(
                env_name("oauth_service_account_file"),
                f"{why} with MAILROOM_RELAY_PROFILE=google (the service account's JSON key file)",
            )
        return
    if settings.oauth_client_id is None:
        raise SettingsError(
            env_name("oauth_client_id"), f"{why} (the Entra application's client ID)"
        )
    secret, certificate = settings.oauth_client_secret, settings.oauth_client_certificate_file
    if secret is None and certificate is None:
        raise SettingsError(
            env_name("oauth_client_secret"),
            f"{why} (or MAILROOM_OAUTH_CLIENT_CERTIFICATE_FILE): the application's credential",
        )
    if secret is not None and certificate is not None:
        raise SettingsError(
            env_name("oauth_client_certificate_file"),
            "set either it or MAILROOM_OAUTH_CLIENT_SECRET, not both",
        )
    if "{tenant}" in settings.oauth_authority and not settings.oauth_tenant:
        raise SettingsError(
            env_name("oauth_tenant"),
            f"{why} (the directory (tenant) ID or domain of the Entra application)",
        )
