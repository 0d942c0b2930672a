"""The cluster's token cache against a real Redis and the real token endpoint: one request for
concurrent workers, a dead holder's lock expires, a token sealed under another secret is never
used, and a refused token is only dropped while it is still the one cached."""

from __future__ import annotations

import asyncio

import redis

from settings import Settings
from tests.support.oauth_relay import CLIENT_ID, OAuthSetup
from tests.support.redis_server import RedisServer
from workers.oauth.cache import KEY_PREFIX, TokenCache
from workers.oauth.setup import token_cache
from workers.oauth.tokens import Token


def _cache(oauth: OAuthSetup, client: redis.Redis, **overrides: object) -> TokenCache:
    settings = Settings(**oauth.microsoft_settings(**overrides))
    cache = token_cache(settings, client)
    assert cache is not None
    return cache


async def test_concurrent_workers_make_one_request(
    oauth: OAuthSetup, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    caches = [_cache(oauth, redis_server.client()) for _ in range(4)]

    tokens = await asyncio.gather(*(cache.token() for cache in caches))

    assert all(isinstance(token, Token) for token in tokens)
    assert len({token.value for token in tokens if isinstance(token, Token)}) == 1
    assert oauth.endpoint.token_requests() == 1
    [key] = redis_client.keys(KEY_PREFIX + "*")
    assert 3500_000 < redis_client.pttl(key) <= 3600_000  # the token's own lifetime


async def test_the_lock_of_a_dead_holder_expires(
    oauth: OAuthSetup, redis_client: redis.Redis
) -> None:
    cache = _cache(oauth, redis_client)
    await cache.token()
    [key] = redis_client.keys(KEY_PREFIX + "*")
    assert isinstance(key, bytes)
    redis_client.delete(key)
    redis_client.set(key + b":lock", "a worker that died", px=300)
    cache.forget()

    token = await cache.token()

    assert isinstance(token, Token)
    assert oauth.endpoint.token_requests() == 2


async def test_a_token_sealed_under_another_secret_is_not_used(
    oauth: OAuthSetup, redis_client: redis.Redis
) -> None:
    first = await _cache(oauth, redis_client).token()
    oauth.endpoint.add_client(CLIENT_ID, "rotated-secret-2")

    second = await _cache(oauth, redis_client, oauth_client_secret="rotated-secret-2").token()

    assert isinstance(first, Token)
    assert isinstance(second, Token)
    assert first.value != second.value
    assert oauth.endpoint.token_requests() == 2


async def test_a_refused_token_is_dropped_only_while_it_is_the_cached_one(
    oauth: OAuthSetup, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    one, other = _cache(oauth, redis_client), _cache(oauth, redis_server.client())
    stale = await one.token()
    assert isinstance(stale, Token)
    renewed = await other.renew(stale)  # another worker replaced it already
    assert isinstance(renewed, Token)

    again = await one.renew(stale)

    assert isinstance(again, Token)
    assert again.value == renewed.value  # taken from Redis, not asked for a third time
    assert oauth.endpoint.token_requests() == 2


async def test_no_repr_shows_the_secret_or_the_token(
    oauth: OAuthSetup, redis_client: redis.Redis
) -> None:
    from tests.support.oauth_relay import CLIENT_SECRET, MAILBOX
    from workers.smtp.peer import BearerCredentials

    cache = _cache(oauth, redis_client)
    token = await cache.token()
    assert isinstance(token, Token)

    shown = repr(cache.oauth) + repr(token) + repr(BearerCredentials(MAILBOX, token.value))

    assert CLIENT_SECRET not in shown
    assert token.value not in shown
    assert MAILBOX in shown
