"""How a worker process's `RelayAccess` is built from validated settings and its Redis client."""

from __future__ import annotations

import redis

from settings import RelayAuth, Settings
from workers.delivery.relay_access import RelayAccess
from workers.oauth.setup import token_cache
from workers.smtp.peer import Credentials
from workers.traffic.relay_hold import RelayHolds


def relay_access(settings: Settings, client: redis.Redis) -> RelayAccess | None:
    """The relay's login and hold (for MAILROOM_DELIVERY=relay and routes to `relay` alike);
    None without a relay or for a relay without AUTH."""
    if settings.relay_host is None or settings.relay_username is None:
        return None
    holds = RelayHolds(client, settings.relay_probe_interval)
    if settings.relay_auth_mode is RelayAuth.XOAUTH2:
        tokens = token_cache(settings, client)
        assert tokens is not None  # xoauth2 with a mailbox always has a client
        return RelayAccess(
            settings.relay_username, holds, tokens=tokens, provider=tokens.oauth.provider
        )
    password = settings.relay_password
    basic = None
    if password is not None:
        basic = Credentials(settings.relay_username, password.get_secret_value())
    return RelayAccess(settings.relay_username, holds, basic=basic)
