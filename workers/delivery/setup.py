"""How a worker process's delivery agent is built from validated settings: its `AgentConfig`
and, with connection reuse on, its `ConnectionPool`."""

from __future__ import annotations

from pathlib import Path

import redis

from settings import DeliveryMode, MtaSts, RelayAuth, Settings
from workers.delivery.config import AgentConfig, Relay
from workers.delivery.hops import Hops, fixed_servers
from workers.delivery.mta_sts import MtaStsPolicies, PolicyStore
from workers.delivery.mta_sts_fetch import PolicyFetcher
from workers.delivery.mx import MxResolver
from workers.queue.leases import lease_ttl
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.peer import Credentials
from workers.smtp.record import Timeouts
from workers.smtp.tls_policy import relay_policy, verified_context
from workers.traffic.profiles import traffic

_MAX_LIFETIME = 300.0  # seconds a connection is reused at most (Postfix's reuse time limit)


def agent_config(settings: Settings, client: redis.Redis | None = None) -> AgentConfig:
    """The agent's fixed settings: routes, relay and MX resolver, HELO name, timeouts, limits;
    with the cluster's Redis `client`, MTA-STS policies too (unless MAILROOM_MTA_STS=off)."""
    relay = _relay(settings)
    by_default = settings.delivery is DeliveryMode.RELAY
    resolver = MxResolver(
        [(server.ip, server.port) for server in settings.dns_nameservers],
        port=settings.mx_port,
        timeout=settings.dns_timeout,
        deny_networks=settings.mx_deny_networks,
    )
    return AgentConfig(
        resolver=resolver,
        mx_port=settings.mx_port,
        relay=relay if by_default else None,
        helo=settings.helo_name,
        timeouts=Timeouts(
            connect=settings.connect_timeout,
            command=settings.command_timeout,
            data=settings.data_timeout,
            session=settings.session_timeout,
        ),
        max_recipients=traffic(settings).max_recipients,
        hops=Hops(
            settings.routes,
            relay,
            by_default,
            fixed_servers(settings.routes, _path(settings.tls_ca_file)),
        ),
        mta_sts=None if client is None else mta_sts_policies(settings, client, resolver),
    )


def mta_sts_policies(
    settings: Settings, client: redis.Redis, resolver: MxResolver
) -> MtaStsPolicies | None:
    """The MTA-STS policies of recipient domains, cached in the cluster's Redis; None when
    MAILROOM_MTA_STS=off. A policy fetch takes at most CONNECT_TIMEOUT seconds in all."""
    if settings.mta_sts is MtaSts.OFF:
        return None
    ca_file = _path(settings.tls_ca_file)
    return MtaStsPolicies(
        resolver,
        PolicyFetcher(resolver, verified_context(ca_file), settings.connect_timeout),
        PolicyStore(client),
        relay_policy("starttls", ca_file),
    )


def connection_pool(settings: Settings) -> ConnectionPool | None:
    """The pool of parked connections, or None when connection reuse is off."""
    if not settings.connection_reuse:
        return None
    return ConnectionPool(
        max_messages=settings.connection_max_messages,
        idle_timeout=settings.connection_idle_timeout,
        # A connection's cap lease must outlive it, through its last session too.
        max_lifetime=min(
            _MAX_LIFETIME,
            lease_ttl(settings.session_timeout, settings.visibility_timeout)
            - settings.session_timeout,
        ),
    )


def _relay(settings: Settings) -> Relay | None:
    """The configured relay, for MAILROOM_DELIVERY=relay and routes to `relay` alike."""
    if settings.relay_host is None:
        return None
    credentials = None
    basic = settings.relay_auth_mode is RelayAuth.BASIC
    if basic and settings.relay_username and settings.relay_password is not None:
        credentials = Credentials(
            settings.relay_username, settings.relay_password.get_secret_value()
        )
    return Relay(
        settings.relay_host,
        settings.relay_port,
        relay_policy(settings.relay_security.value, _path(settings.tls_ca_file)),
        credentials,
    )


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)
