"""Which MTA-STS policy (RFC 8461) a recipient domain has now, for the whole cluster.

The policy is kept in Redis, one key per domain (`mailroom:mta_sts:<domain>`: its TXT id and
the policy text), expiring at the policy's `max_age`, so one worker's fetch serves every worker.
The `_mta-sts` TXT record is read again when the in-process copy is older than `REFRESH`
seconds: a new id means a new fetch; no record, or a failed look-up, keeps the cached policy
until it expires (RFC 8461 §3.3, §5). In front of Redis, each process keeps what it decided per
domain for `REFRESH` seconds (`TtlCache`), so a message costs no DNS query, fetch or Redis round
trip. A fetch that failed is not tried again for the same TXT id for `RETRY_FAILED` seconds, by
any worker (`mailroom:mta_sts_failed:<domain>`). Redis is reached
from the event loop through a thread (the client is synchronous), only on those refreshes; a
Redis error is logged and treated as an empty cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import dns.exception
import dns.name
import redis

from workers.delivery.mta_sts_fetch import Fetched, FetchFailed, PolicyFetcher
from workers.delivery.mta_sts_policy import Malformed, Mode, Policy, parse_policy, parse_record
from workers.delivery.mx import MxResolver
from workers.delivery.ttl_cache import TtlCache
from workers.model.reply import Reply, mta_sts_requirement
from workers.smtp.tls_policy import TlsMode, TlsPolicy

log = logging.getLogger(__name__)

KEY_PREFIX = "mailroom:mta_sts:"
# A fetch that failed, for the TXT id it was made for: no worker of the cluster tries again for
# that id within RETRY_FAILED seconds.
FAILED_PREFIX = "mailroom:mta_sts_failed:"
REFRESH = 300.0  # seconds a process trusts what it last learnt of a domain
RETRY_FAILED = 300.0  # seconds before a failed fetch (with nothing cached) is tried again
_MAX_DOMAINS = 10_000
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Known:
    """What a process knows of a domain: its policy (None: none applies) and why not, if not."""

    policy: Policy | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Cached:
    """The cluster's copy of a policy: the TXT id it was fetched under, and seconds left."""

    policy_id: str
    policy: Policy
    text: str
    ttl: float


class PolicyStore:
    """The cluster's cached policies in Redis (synchronous: call it from a thread)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def get(self, domain: str) -> tuple[_Cached | None, _Failure | None]:
        """The cached policy of `domain`, and the fetch that last failed for it, if any."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(KEY_PREFIX + domain)
        pipe.pttl(KEY_PREFIX + domain)
        pipe.get(FAILED_PREFIX + domain)
        raw, pttl, failed = pipe.execute()
        return _policy(raw, pttl), _failure(failed)

    def put(self, domain: str, policy_id: str, fetched: Fetched) -> None:
        key = KEY_PREFIX + domain
        self._client.delete(FAILED_PREFIX + domain)
        if fetched.policy.max_age <= 0:
            self._client.delete(key)  # max_age 0: the domain asks for no caching at all
            return
        value = json.dumps({"id": policy_id, "policy": fetched.text})
        self._client.set(key, value, ex=fetched.policy.max_age)

    def put_failure(self, domain: str, policy_id: str, reason: str) -> None:
        value = json.dumps({"id": policy_id, "reason": reason})
        self._client.set(FAILED_PREFIX + domain, value, ex=int(RETRY_FAILED))


@dataclass(frozen=True, slots=True)
class _Failure:
    policy_id: str
    reason: str


def _failure(raw: bytes | str | None) -> _Failure | None:
    if raw is None:
        return None
    try:
        stored = json.loads(raw)
        return _Failure(str(stored["id"]), str(stored["reason"]))
    except (ValueError, KeyError, TypeError):
        return None


def _policy(raw: bytes | str | None, pttl: int | None) -> _Cached | None:
    if raw is None or pttl is None or pttl <= 0:
        return None
    try:
        stored = json.loads(raw)
        policy_id, text = str(stored["id"]), str(stored["policy"])
    except (ValueError, KeyError, TypeError):
        return None  # not ours, or from an older format: as if nothing were cached
    policy = parse_policy(text)
    if isinstance(policy, Malformed):
        return None
    return _Cached(policy_id, policy, text, pttl / 1000)


class MtaStsPolicies:
    """The policy in force for each recipient domain, as RFC 8461 §5 has a sender find it."""

    def __init__(
        self,
        resolver: MxResolver,
        fetcher: PolicyFetcher,
        store: PolicyStore,
        tls: TlsPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`tls` is what MX hosts of a domain whose policy is enforced get: STARTTLS required,
        the certificate verified for the MX host's name (in mode testing: verified when offered,
        retried unverified when that fails)."""
        self._enforced = tls
        self._tested = replace(tls, mode=TlsMode.VERIFIED_MAY)
        self._resolver = resolver
        self._fetcher = fetcher
        self._store = store
        self._known: TtlCache[str, Known] = TtlCache(clock, _MAX_DOMAINS)
        # One refresh per domain at a time: concurrent deliveries wait for it.
        self._refreshing: dict[str, asyncio.Future[Known]] = {}

    def tls(self, policy: Policy, destination: str) -> TlsPolicy:
        """The TLS an MX host of `destination` gets under its `policy` (enforce or testing)."""
        if policy.mode is Mode.ENFORCE:
            return replace(self._enforced, required_by=mta_sts_requirement(destination))
        return self._tested

    async def policy(self, destination: str) -> Known:
        """The policy of domain `destination`, or why none applies."""
        # Keyed by the destination as given: the hot path pays one dict look-up, no IDNA.
        known = self._known.get(destination)
        if known is not None:
            return known
        running = self._refreshing.get(destination)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[Known] = asyncio.get_running_loop().create_future()
        self._refreshing[destination] = future
        try:
            known, ttl = await self._learn(destination)
            self._known.put(destination, known, ttl)
            future.set_result(known)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._refreshing[destination]
        return known

    async def _learn(self, destination: str) -> tuple[Known, float]:
        try:
            domain = dns.name.from_text(destination).to_text(omit_final_dot=True).lower()
        except dns.exception.DNSException:
            return Known(None, "not a domain name"), REFRESH
        return await self._refresh(domain)

    async def _refresh(self, domain: str) -> tuple[Known, float]:
        record = await self._resolver.texts(f"_mta-sts.{domain}")
        nothing: tuple[_Cached | None, _Failure | None] = (None, None)
        cached, failure = await self._safely(lambda: self._store.get(domain), nothing)
        policy_id = None if isinstance(record, Reply) else parse_record(record)
        if not isinstance(policy_id, str):
            # No record (or a broken one, or the look-up failed): a cached policy stays in force.
            if cached is not None:
                return Known(cached.policy), min(REFRESH, cached.ttl)
            return Known(None, _no_record(domain, record, policy_id)), REFRESH
        if cached is not None and cached.policy_id == policy_id:
            return Known(cached.policy), min(REFRESH, cached.ttl)
        if failure is not None and failure.policy_id == policy_id:
            fetched: Fetched | FetchFailed = FetchFailed(failure.reason)  # another worker's
        else:
            fetched = await self._fetcher.fetch(domain)
            if isinstance(fetched, FetchFailed):
                log.warning("MTA-STS policy of %s not fetched: %s", domain, fetched.reason)
                reason = fetched.reason
                await self._safely(lambda: self._store.put_failure(domain, policy_id, reason), None)
        if isinstance(fetched, FetchFailed):
            if cached is not None:
                return Known(cached.policy, fetched.reason), min(RETRY_FAILED, cached.ttl)
            return Known(None, fetched.reason), RETRY_FAILED
        await self._safely(lambda: self._store.put(domain, policy_id, fetched), None)
        return Known(fetched.policy), min(REFRESH, max(fetched.policy.max_age, 1))

    async def _safely(self, call: Callable[[], _T], fallback: _T) -> _T:
        try:
            return await asyncio.to_thread(call)
        except redis.RedisError as exc:
            log.warning("MTA-STS policy cache unavailable: %s", exc)
            return fallback


def _no_record(domain: str, record: tuple[str, ...] | Reply, parsed: Malformed | None) -> str:
    if isinstance(record, Reply):
        if record.reply_class == 5:
            return f"no _mta-sts.{domain} record"
        return record.text
    if isinstance(parsed, Malformed):
        return parsed.reason
    return f"no _mta-sts.{domain} record"
