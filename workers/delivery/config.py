"""What a delivery agent is built from, once per worker process: where mail goes (the MX hosts
through `resolver`, or the relay), how its servers are talked to, and the per-delivery limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.delivery.mx import MxResolver
from workers.smtp.peer import Login, Peer
from workers.smtp.record import Timeouts
from workers.smtp.tls_policy import TlsPolicy, opportunistic_policy


@dataclass(frozen=True, slots=True)
class Relay:
    """The smarthost every message goes through in relay mode."""

    host: str
    port: int
    tls: TlsPolicy
    credentials: Login | None  # Basic AUTH's; a token is the delivery's (`RelayAccess`)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The agent's fixed settings. `max_addresses` and `max_sessions` are Postfix's
    `smtp_mx_address_limit` and `smtp_mx_session_limit`; `max_recipients` (a relay profile's
    limit) splits a delivery into messages of that many recipients."""

    resolver: MxResolver
    mx_port: int
    relay: Relay | None
    helo: str
    timeouts: Timeouts
    mx_tls: TlsPolicy = field(default_factory=opportunistic_policy)
    max_addresses: int = 5
    max_sessions: int = 2
    max_recipients: int | None = None

    def peer(
        self, destination: str, host: str, address: str, port: int, login: Login | None = None
    ) -> Peer:
        """How to talk to `host` at `address` for `destination`: the relay's TLS and account
        (`login` when the delivery brings its own, an access token), or opportunistic TLS to
        an MX host."""
        relay = self.relay
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
