"""One access token for the whole cluster, in Redis, replaced shortly before it expires by one
worker at a time.

Key `mailroom:oauth:token:<sha256 of provider, authority or token URI, client, subject,
scope>` holds the token sealed (`workers.oauth.sealing`) with a TTL of its lifetime. A process
keeps the token it last used in memory and goes back to Redis only when less than
`REFRESH_MARGIN` seconds remain. Then, in that process, one coroutine refreshes and the others
wait for it; across processes, the one that takes the lock (`SET NX PX` with a random value,
released by compare-and-delete, expiring by itself if its holder dies) asks the provider and
stores the answer, while the others use the token still valid, or poll the key for a bounded
time for the new one. Each request to a provider is counted in
`mailroom:metrics:oauth_tokens` (field `provider|outcome`: mailroom_oauth_token_requests_total).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from workers.oauth.sealing import seal, sealing_key, unseal
from workers.oauth.tokens import Fetcher, OAuthClient, Token, TokenOutcome, TokenUnavailable
from workers.observe.metrics import OAUTH_TOKENS_KEY

log = logging.getLogger(__name__)
T = TypeVar("T")

KEY_PREFIX = "mailroom:oauth:token:"
METRICS_KEY = OAUTH_TOKENS_KEY
REFRESH_MARGIN = 300.0  # seconds before expiry a token is replaced (Microsoft's own margin)
_POLL = 0.1  # seconds between two looks at the key while another worker refreshes
_RECENT_FAILURE = 1.0  # seconds a failed request's answer serves coroutines that waited for it
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def cache_key(client: OAuthClient, issuer: str) -> str:
    """The token's key: one per provider, issuer, client, mailbox and scope."""
    parts = (client.provider.value, issuer, client.client_id, client.subject, client.scope)
    return KEY_PREFIX + hashlib.sha256("\x00".join(parts).encode()).hexdigest()


class TokenCache:
    """The cluster's token for one `OAuthClient`; one per worker process.

    `secret` gives the key material (client secret or private key) and the issuer (authority
    or token URI) the cache is keyed and sealed with; None when it cannot be had (a key file
    that cannot be read: then `fetch` says why).
    """

    def __init__(
        self,
        client: redis.Redis,
        oauth: OAuthClient,
        fetcher: Fetcher,
        secret: Callable[[], tuple[bytes, str] | None],
        *,
        margin: float = REFRESH_MARGIN,
    ) -> None:
        self._redis = client
        self._oauth = oauth
        self._fetcher = fetcher
        self._secret = secret
        self._margin = margin
        self._release = client.register_script(_RELEASE)
        self._local: Token | None = None
        self._failure: tuple[TokenOutcome, float] | None = None
        self._locks: dict[int, asyncio.Lock] = {}

    @property
    def oauth(self) -> OAuthClient:
        return self._oauth

    async def token(self) -> TokenOutcome:
        """A token with more than the margin left, from memory, Redis or the provider."""
        local = self._local
        if local is not None and local.expires_at - time.time() > self._margin:
            return local
        async with self._lock():
            local = self._local
            if local is not None and local.expires_at - time.time() > self._margin:
                return local
            failure = self._failure
            if failure is not None and time.monotonic() - failure[1] < _RECENT_FAILURE:
                return failure[0]
            got = await self._guarded(None)
            self._failure = None if isinstance(got, Token) else (got, time.monotonic())
            return got

    async def renew(self, used: Token) -> TokenOutcome:
        """A new token in place of `used`, which the relay refused: it is dropped from Redis
        unless another worker has replaced it already."""
        async with self._lock():
            if self._local is not None and self._local.value != used.value:
                return self._local  # replaced while this one waited
            self._local = None
            self._failure = None
            got = await self._guarded(used)
            self._failure = None if isinstance(got, Token) else (got, time.monotonic())
            return got

    def forget(self) -> None:
        """Drop the in-memory copy (the next use looks in Redis)."""
        self._local = None

    async def _guarded(self, refused: Token | None) -> TokenOutcome:
        try:
            return await self._refresh(refused)
        except redis.RedisError as exc:
            return TokenUnavailable(f"the token cache in Redis did not answer: {exc}")

    async def _refresh(self, refused: Token | None) -> TokenOutcome:
        secret = await _off_loop(self._secret)  # Google's: the key file, read from disk
        if secret is None:
            return await self._fetch_only()
        material, issuer = secret
        key = cache_key(self._oauth, issuer)
        cipher = sealing_key(material, key.encode())
        lock_key, holder = key + ":lock", secrets.token_hex(16)
        bound = self._fetch_bound()
        waited_until = time.monotonic() + bound
        while True:
            cached = await _off_loop(_cached, self._redis, key, cipher)
            if cached is not None and refused is not None and cached.value == refused.value:
                await _off_loop(_drop_if_same, self._redis, key, cipher, refused)
                cached = None
            now = time.time()
            if cached is not None and cached.expires_at - now > self._margin:
                self._local = cached
                return cached
            if await _off_loop(self._redis.set, lock_key, holder, nx=True, px=int(bound * 1000)):
                try:
                    return await self._fetch_and_store(key, cipher)
                finally:
                    await _off_loop(self._release, [lock_key], [holder])
            if cached is not None and cached.expires_at > now:
                return cached  # another worker is replacing it; it is still good meanwhile
            if time.monotonic() >= waited_until:
                return TokenUnavailable("another worker's token request took too long")
            await asyncio.sleep(_POLL)

    async def _fetch_and_store(self, key: str, cipher: Any) -> TokenOutcome:
        got = await self._fetch_only()
        if isinstance(got, Token):
            ttl = int((got.expires_at - time.time()) * 1000)
            if ttl > 0:
                sealed = seal(cipher, got, key.encode())
                await _off_loop(self._redis.set, key, sealed, px=ttl)
            self._local = got
        return got

    async def _fetch_only(self) -> TokenOutcome:
        """One request to the provider, in a thread, within the bound; counted."""
        oauth = self._oauth
        try:
            got = await asyncio.wait_for(
                asyncio.to_thread(self._fetcher, oauth), self._fetch_bound()
            )
        except TimeoutError:
            got = TokenUnavailable(f"no token within {self._fetch_bound():g} s")
        outcome = "issued" if isinstance(got, Token) else "refused"
        if isinstance(got, TokenUnavailable):
            outcome = "unavailable"
        try:
            field = f"{oauth.provider.value}|{outcome}"
            await _off_loop(self._redis.hincrby, METRICS_KEY, field, 1)
        except redis.RedisError as exc:  # a count lost, never a token
            log.warning("the token request was not counted: %s", exc)
        return got

    def _fetch_bound(self) -> float:
        # msal makes two requests (discovery, token); google-auth retries a failed one.
        return self._oauth.timeout * 3 + 1

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()  # a lock belongs to one loop (the runtime may restart)
        lock = self._locks.get(id(loop))
        if lock is None:
            self._locks = {id(loop): (lock := asyncio.Lock())}
        return lock


def _cached(client: redis.Redis, key: str, cipher: Any) -> Token | None:
    """The token Redis holds under `key`, if `cipher` opens it."""
    sealed = client.get(key)
    if not isinstance(sealed, bytes):
        return None
    return unseal(cipher, sealed, key.encode())


def _drop_if_same(client: redis.Redis, key: str, cipher: Any, refused: Token) -> None:
    """Delete the cached token only while it is the `refused` one (WATCH/MULTI)."""
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            sealed = pipe.get(key)
            if isinstance(sealed, bytes):
                cached = unseal(cipher, sealed, key.encode())
                if cached is not None and cached.value == refused.value:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
        except redis.WatchError:
            pass  # replaced meanwhile: the new one is not the refused one


async def _off_loop(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking Redis call, off the event loop."""
    return await asyncio.to_thread(call, *args, **kwargs)
