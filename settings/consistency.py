"""The checks between settings: each value may be valid alone and still contradict another
(relay mode without a host, a session longer than the visibility timeout, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from settings.choices import DeliveryMode
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
    if settings.relay_username is not None and settings.relay_password is None:
        raise SettingsError(
            env_name("relay_password"), "required when MAILROOM_RELAY_USERNAME is set"
        )
    if settings.relay_password is not None and settings.relay_username is None:
        raise SettingsError(
            env_name("relay_username"), "required when MAILROOM_RELAY_PASSWORD is set"
        )
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
