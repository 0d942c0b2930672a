"""What a delivery agent is built from, once per worker process: where mail goes (the MX hosts
through `resolver`, or the relay), how its servers are talked to, and the per-delivery limits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from workers.delivery.hops import Hops, Relay
from workers.delivery.mta_sts import MtaStsPolicies
from workers.delivery.mx import MxResolver
from workers.model.reply import Reply
from workers.smtp.peer import Login, Peer
from workers.smtp.record import Timeouts
from workers.smtp.tls_policy import TlsPolicy, opportunistic_policy

__all__ = ["AgentConfig", "Hops", "Relay"]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The agent's fixed settings. `max_addresses` and `max_sessions` are Postfix's
    `smtp_mx_address_limit` and `smtp_mx_session_limit`; `max_recipients` (a relay profile's
    limit) splits a delivery into messages of that many recipients. `hops` are the routes
    (settings); without them, `relay` takes every destination, or (None) each goes to its MX.
    `mta_sts` finds the recipient domains' MTA-STS policies, for direct MX delivery only."""

    resolver: MxResolver
    mx_port: int
    relay: Relay | None
    helo: str
    timeouts: Timeouts
    mx_tls: TlsPolicy = field(default_factory=opportunistic_policy)
    max_addresses: int = 5
    max_sessions: int = 2
    max_recipients: int | None = None
    hops: Hops | None = None
    mta_sts: MtaStsPolicies | None = None  # None: MTA_STS=off, or no Redis (`mailroom check`)

    def hop(self, destination: str) -> Relay | Reply | None:
        """The server `destination`'s mail goes through, None for its MX hosts, or the reply
        that defers it."""
        return self.relay if self.hops is None else self.hops.hop(destination)

    def with_relay_login(self, login: Login) -> AgentConfig:
        """This config with the configured relay's AUTH done as `login` (`mailroom check`'s
        fresh token rather than the cluster's cached one)."""
        relay = self.relay if self.hops is None else self.hops.relay
        if relay is None:
            return self
        logged_in = replace(relay, credentials=login)
        return replace(
            self,
            relay=None if self.relay is None else logged_in,
            hops=None if self.hops is None else replace(self.hops, relay=logged_in),
        )

    def relayed(self, destination: str) -> bool:
        """Whether `destination`'s mail goes through the configured relay (MAILROOM_RELAY_HOST),
        whose login may be an access token and may be held, rather than a route's own server."""
        relay = self.relay if self.hops is None else self.hops.relay
        return relay is not None and self.hop(destination) is relay

    def peer(
        self, destination: str, host: str, address: str, port: int, login: Login | None = None
    ) -> Peer:
        """How to talk to `host` at `address` for `destination`: the relay's (or fixed
        server's) TLS and account (`login` when the delivery brings its own, an access token),
        or opportunistic TLS to an MX host."""
        server = self.hop(destination)
        relay = server if isinstance(server, Relay) else None
        return Peer(
            host,
            address,
            port,
            relay.tls if relay is not None else self.mx_tls,
            self.helo,
            self.timeouts,
            (login or relay.credentials) if relay is not None else None,
            destination,
        )
