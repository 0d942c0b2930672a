"""MAILROOM_ROUTES: the next hop per recipient domain, as Postfix's `transport_maps`.

A JSON object whose keys are a domain (exact match), `.example.com` (every subdomain of
example.com, not example.com itself) or `*`, and whose values are `mx` (the domain's own mail
exchangers), `relay` (MAILROOM_RELAY_HOST) or `smtp://host[:port][?tls=none|starttls|tls]`, a
fixed server (port 25 unless given). A fixed server's `starttls` (the default) is opportunistic,
as for MX hosts; `tls` is implicit TLS verified like the relay's; `none` never encrypts (a local
catcher). A fixed host is a DNS name, or a loopback address (a catcher, tests): other servers
are named, as their certificates name them.

`route_for` looks a domain up: the exact key, then the longest `.suffix`, then `*`; None leaves
it to MAILROOM_DELIVERY. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import idna

from settings.parsing import is_dns_name, json_object

WILDCARD = "*"
FIXED_SCHEME = "smtp"
_DEFAULT_PORT = 25
_MAX_PORT = 65535


class HopKind(StrEnum):
    MX = "mx"  # the recipient domain's mail exchangers
    RELAY = "relay"  # MAILROOM_RELAY_HOST
    FIXED = "smtp"  # one server named in the route


class FixedTls(StrEnum):
    NONE = "none"  # plaintext only: a local catcher
    STARTTLS = "starttls"  # STARTTLS when offered, unverified (as for MX hosts)
    TLS = "tls"  # implicit TLS, verified against the public CAs and MAILROOM_TLS_CA_FILE


@dataclass(frozen=True, slots=True)
class Route:
    """Where the mail of a domain goes; `host`, `port` and `tls` only for a fixed server."""

    kind: HopKind
    host: str = ""
    port: int = _DEFAULT_PORT
    tls: FixedTls = FixedTls.STARTTLS

    @property
    def server(self) -> str:
        """A fixed server's destination name, `smtp://host:port`: its connections, limits and
        shard are its own, whatever domain routes to it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{FIXED_SCHEME}://{host}:{self.port}"

    def __str__(self) -> str:
        if self.kind is HopKind.FIXED:
            return f"{self.server}?tls={self.tls.value}"
        return self.kind.value


MX_ROUTE = Route(HopKind.MX)
RELAY_ROUTE = Route(HopKind.RELAY)


def route_for(routes: Mapping[str, Route], domain: str) -> Route | None:
    """The route of `domain` (a lower-case A-label): exact, longest `.suffix`, then `*`."""
    exact = routes.get(domain)
    if exact is not None:
        return exact
    labels = domain.split(".")
    for start in range(1, len(labels)):
        suffix = routes.get("." + ".".join(labels[start:]))
        if suffix is not None:
            return suffix
    return routes.get(WILDCARD)


def fixed_server(destination: str) -> Route | None:
    """The fixed server a destination named `smtp://host:port` stands for (TLS `starttls`; the
    routes say otherwise), or None for any other destination."""
    if not destination.startswith(f"{FIXED_SCHEME}://"):
        return None
    try:
        return parse_route(destination)
    except ValueError:
        return None


def parse_routes(text: str) -> dict[str, Route]:
    """Parse the JSON object of MAILROOM_ROUTES; ValueError names the first bad key or value."""
    return routes_from_mapping(json_object(text))


def routes_from_mapping(raw: Mapping[Any, Any]) -> dict[str, Route]:
    """Check an already-decoded key → route mapping; values are Route or route text."""
    routes: dict[str, Route] = {}
    for key, value in raw.items():
        name = _key(key)
        if name in routes:
            raise ValueError(f"{name!r} is given twice")
        if isinstance(value, Route):
            routes[name] = value
            continue
        if not isinstance(value, str):
            raise ValueError(f"{name!r}: must be mx, relay or smtp://host:port (got {value!r})")
        try:
            routes[name] = parse_route(value)
        except ValueError as exc:
            raise ValueError(f"{name!r}: {exc}") from None
    _one_tls_per_server(routes)
    return routes


def parse_route(text: str) -> Route:
    """Parse one route value: `mx`, `relay` or `smtp://host[:port][?tls=...]`."""
    word = text.strip()
    if word.lower() in (HopKind.MX, HopKind.RELAY):
        return Route(HopKind(word.lower()))
    try:
        parts = urlsplit(word)
    except ValueError:
        raise ValueError(f"must be mx, relay or smtp://host:port (got {text!r})") from None
    if "@" in parts.netloc:
        raise ValueError("a fixed server takes no credentials in its route (value not shown)")
    if parts.scheme.lower() != FIXED_SCHEME or not parts.netloc:
        raise ValueError(f"must be mx, relay or smtp://host:port (got {text!r})")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"must be smtp://host:port with nothing after the port (got {text!r})")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port must be a number 1..{_MAX_PORT} (got {text!r})") from None
    if port == 0:
        raise ValueError(f"port must be a number 1..{_MAX_PORT} (got {text!r})")
    host = (parts.hostname or "").lower()
    _check_host(host, text)
    return Route(HopKind.FIXED, host, port or _DEFAULT_PORT, _tls(parts.query, text))


def _key(key: object) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"each key must be a domain, .domain or * (got {key!r})")
    name = key.strip().lower()
    if name == WILDCARD:
        return name
    suffix = name.startswith(".")
    domain = name.removeprefix(".")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise ValueError(f"key {key!r} is not a valid domain") from None
    if not is_dns_name(domain) or domain.endswith(".") or "*" in name:
        raise ValueError(f"each key must be a domain, .domain or * (got {key!r})")
    return "." + domain if suffix else domain


def _check_host(host: str, text: str) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None:
        # RFC 3696 §2: a top-level label is never all digits, so "10.1" is no name.
        if not is_dns_name(host) or host.rsplit(".", 1)[-1].isdigit():
            raise ValueError(f"the host must be a DNS name or a loopback address (got {text!r})")
        return
    if not address.is_loopback:
        raise ValueError(
            f"an address is only accepted on loopback; name other servers (got {text!r})"
        )


def _tls(query: str, text: str) -> FixedTls:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        pairs = [("", "")]
    if any(name != "tls" for name, _ in pairs) or len(pairs) > 1:
        raise ValueError(f"the only option is ?tls=none|starttls|tls (got {text!r})")
    if not pairs:
        return FixedTls.STARTTLS
    try:
        return FixedTls(pairs[0][1].lower())
    except ValueError:
        raise ValueError(f"tls must be none, starttls or tls (got {text!r})") from None


def _one_tls_per_server(routes: Mapping[str, Route]) -> None:
    """A fixed server is one destination: two routes to it must agree on its TLS."""
    seen: dict[str, Route] = {}
    for route in routes.values():
        if route.kind is not HopKind.FIXED:
            continue
        earlier = seen.setdefault(route.server, route)
        if earlier.tls is not route.tls:
            raise ValueError(
                f"{route.server} is given both tls={earlier.tls.value} and tls={route.tls.value}"
            )
