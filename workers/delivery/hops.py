"""Which server a destination's mail goes to: its MX hosts, the relay, or a route's fixed server.

The producer named the destination (tasks/routing.py): a domain, `relay` or `smtp://host:port`.
`relay` and a fixed server are what they say. A domain is looked up in this worker's own
MAILROOM_ROUTES, then MAILROOM_DELIVERY, on every attempt, as Postfix's queue manager asks
`transport_maps` again for mail already queued: changed routes apply to deferred mail too, and
a worker that catches all mail (`scripts/run` without delivery settings) catches the mail of
producers that know nothing of its routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from settings import FixedTls, HopKind, Route, route_for
from settings.routes import fixed_server
from workers.model.reply import Code, Reply, Step
from workers.smtp.peer import Login
from workers.smtp.tls_policy import TlsPolicy, opportunistic_policy, relay_policy

RELAY_DESTINATION = "relay"


@dataclass(frozen=True, slots=True)
class Relay:
    """A server every message of a destination goes through: the smarthost (MAILROOM_RELAY_HOST)
    or a route's fixed server. `tls` None: plaintext only (a route's `?tls=none`)."""

    host: str
    port: int
    tls: TlsPolicy | None
    credentials: Login | None  # Basic AUTH's; a token is the delivery's (`RelayAccess`)


@dataclass(frozen=True, slots=True)
class Hops:
    """A worker's routes. `relay` is the configured relay (MAILROOM_RELAY_HOST), `by_default`
    whether a domain no route names goes to it (MAILROOM_DELIVERY=relay); `servers` are the
    routes' fixed servers by destination name (`fixed_servers`)."""

    routes: Mapping[str, Route] = field(default_factory=dict)
    relay: Relay | None = None
    by_default: bool = False
    servers: Mapping[str, Relay] = field(default_factory=dict)

    def hop(self, destination: str) -> Relay | Reply | None:
        """The server every message to `destination` goes through, None for its MX hosts, or
        the reply that defers it (`relay` with no relay configured)."""
        if destination == RELAY_DESTINATION:
            return self._relay()
        fixed = fixed_server(destination)
        if fixed is not None:
            return self._server(fixed)
        route = route_for(self.routes, destination)
        if route is None:
            return self._relay() if self.by_default else None
        if route.kind is HopKind.RELAY:
            return self._relay()
        if route.kind is HopKind.FIXED:
            return self._server(route)
        return None

    def _relay(self) -> Relay | Reply:
        if self.relay is None:
            return Reply(
                Code.LOCAL_ERROR,
                "4.3.5",
                "no relay is configured here (MAILROOM_RELAY_HOST) for mail queued to the relay",
                Step.RESOLVE_MX,
            )
        return self.relay

    def _server(self, route: Route) -> Relay:
        known = self.servers.get(route.server)
        if known is not None:
            return known
        # Queued under routes that have changed since: still that server, opportunistic TLS.
        return Relay(route.host, route.port, opportunistic_policy(), None)


def fixed_servers(routes: Mapping[str, Route], ca_file: str | None) -> dict[str, Relay]:
    """Every fixed server the routes name, with its TLS policy, built once per process."""
    return {
        route.server: Relay(route.host, route.port, _policy(route.tls, ca_file), None)
        for route in routes.values()
        if route.kind is HopKind.FIXED
    }


def _policy(tls: FixedTls, ca_file: str | None) -> TlsPolicy | None:
    if tls is FixedTls.NONE:
        return None
    if tls is FixedTls.TLS:
        return relay_policy("tls", ca_file)
    return opportunistic_policy()
