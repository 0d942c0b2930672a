"""Pure parsers for the string formats of MAILROOM_* variables, and the values they produce.

Each parser takes the raw text of one variable and returns a frozen value, or raises ValueError
with a short, single-line message that names the problem and echoes the offending part (callers
prefix the variable name). No I/O, no environment: everything here is tested table-driven.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

_RATE_UNITS = {"s": 1, "m": 60, "h": 3600}
_RATE_RE = re.compile(r"([0-9]+)/([smh])")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
_MAX_DNS_NAME = 253
_MAX_PORT = 65535


@dataclass(frozen=True)
class Rate:
    """At most `count` deliveries in any window of `per_seconds` seconds, spaced evenly."""

    count: int
    per_seconds: int

    def __post_init__(self) -> None:
        if self.count < 1 or self.per_seconds < 1:
            raise ValueError(f"rate needs count >= 1 and per_seconds >= 1 (got {self!r})")

    @property
    def interval(self) -> float:
        """Seconds between two deliveries when they are spaced evenly (GCRA emission interval)."""
        return self.per_seconds / self.count

    def __str__(self) -> str:
        for unit, seconds in _RATE_UNITS.items():
            if self.per_seconds == seconds:
                return f"{self.count}/{unit}"
        return f"{self.count}/{self.per_seconds}s"


@dataclass(frozen=True)
class Nameserver:
    """One DNS server to ask for MX look-ups."""

    ip: str
    port: int = 53

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.ip)
        _check_port(self.port)


@dataclass(frozen=True)
class Listen:
    """A host (IP address or name) and TCP port a server binds to."""

    host: str
    port: int

    def __post_init__(self) -> None:
        _check_port(self.port)

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can connect (127.0.0.0/8, ::1 or `localhost`)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_rate(text: str) -> Rate:
    """Parse `"N/s"`, `"N/m"` or `"N/h"` (N >= 1) into a Rate; raise ValueError otherwise."""
    match = _RATE_RE.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f'must be "N/s", "N/m" or "N/h" with N >= 1 (got {text!r})')
    return Rate(count=int(match.group(1)), per_seconds=_RATE_UNITS[match.group(2)])


def parse_rate_limits(text: str) -> dict[str, Rate]:
    """Parse a JSON object of destination → rate spec; keys are lower-cased (domains)."""
    return rate_limits_from_mapping(json_object(text))


def rate_limits_from_mapping(raw: dict[Any, Any]) -> dict[str, Rate]:
    """Check an already-decoded destination → rate mapping; values are Rate or rate specs."""
    limits: dict[str, Rate] = {}
    for key, value in raw.items():
        destination = _destination(key)
        if isinstance(value, Rate):
            limits[destination] = value
        elif isinstance(value, str):
            try:
                limits[destination] = parse_rate(value)
            except ValueError as exc:
                raise ValueError(f"{destination!r}: {exc}") from None
        else:
            raise ValueError(f'{destination!r}: must be "N/s", "N/m" or "N/h" (got {value!r})')
    return limits


def parse_max_connections(text: str) -> dict[str, int]:
    """Parse a JSON object of destination → most concurrent sessions (an integer >= 1)."""
    return max_connections_from_mapping(json_object(text))


def max_connections_from_mapping(raw: dict[Any, Any]) -> dict[str, int]:
    """Check an already-decoded destination → connection-cap mapping."""
    caps: dict[str, int] = {}
    for key, value in raw.items():
        destination = _destination(key)
        # bool is an int subclass; `true` in JSON is a mistake, not a cap of 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{destination!r}: must be an integer >= 1 (got {value!r})")
        caps[destination] = value
    return caps


def parse_retry_delays(text: str) -> tuple[int, ...]:
    """Parse comma-separated seconds such as `"60,300,900"`: at least one, each > 0."""
    items = [item.strip() for item in text.split(",")]
    if items == [""]:
        raise ValueError("needs at least one delay in seconds (got '')")
    delays: list[int] = []
    for item in items:
        if not _is_number(item) or int(item) < 1:
            raise ValueError(f"each delay must be a whole number of seconds > 0 (got {item!r})")
        delays.append(int(item))
    return tuple(delays)


def parse_nameservers(text: str) -> tuple[Nameserver, ...]:
    """Parse comma-separated `ip`, `ip:port`, `[ipv6]:port` or bare IPv6; empty means system."""
    if not text.strip():
        return ()
    return tuple(parse_nameserver(item) for item in text.split(","))


def parse_nameserver(text: str) -> Nameserver:
    """Parse one nameserver (see parse_nameservers); the address must be an IP literal."""
    item = text.strip()
    host, port = item, 53
    if item.startswith("[") and item.endswith("]"):
        host = item[1:-1]
    elif item.startswith("[") or item.count(":") == 1:
        host, port = _split_host_port(item)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver must be an IP address (got {item!r})") from None
    return Nameserver(ip=str(ip), port=port)


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse comma-separated CIDR networks (`10.0.0.0/8, fd00::/8`; a bare address is a /32 or
    /128); empty means none. Host bits must be zero: `10.0.0.1/8` is refused as a likely typo."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            raise ValueError(
                f"each entry must be a network in CIDR form, as in 10.0.0.0/8 (got {item!r})"
            ) from None
    return tuple(networks)


def parse_listen(text: str) -> Listen:
    """Parse `host:port` or `[ipv6]:port` into a Listen; the port is required."""
    item = text.strip()
    if item.count(":") > 1 and not item.startswith("["):
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:5555 (got {item!r})")
    host, port = _split_host_port(item)
    if not is_ip(host) and not is_dns_name(host):
        raise ValueError(f"must be host:port, as in 127.0.0.1:5555 (got {item!r})")
    return Listen(host=host, port=port)


def parse_relay_host(text: str) -> str:
    """Check a relay host: a DNS name, never an IP address (certificates name hosts)."""
    host = text.strip()
    if is_ip(host.removeprefix("[").removesuffix("]")):
        raise ValueError(f"must be a DNS name, not an IP address (got {text!r})")
    if re.fullmatch(r"[^:]+:[0-9]+", host):
        raise ValueError(
            f"must be a DNS name without a port; put the port in MAILROOM_RELAY_PORT (got {text!r})"
        )
    if not is_dns_name(host):
        raise ValueError(f"must be a valid DNS name (got {text!r})")
    # RFC 3696 §2: a top-level label is never all digits, so "10.1" is an address, not a name.
    if host.removesuffix(".").rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"must be a DNS name, not an IP address (got {text!r})")
    return host


def is_ip(text: str) -> bool:
    """True when `text` is an IPv4 or IPv6 address (no brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_dns_name(text: str) -> bool:
    """True when `text` is a valid ASCII host name (LDH labels, a trailing dot allowed)."""
    labels = text.removesuffix(".").split(".")
    return 0 < len(text) <= _MAX_DNS_NAME and all(_LABEL_RE.fullmatch(x) for x in labels)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def json_value(text: str, what: str) -> Any:
    """The JSON `text` holds, whatever its type; ValueError saying it must be `what` otherwise
    (never echoing the text: it may hold a secret)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"must be {what}: {exc.msg} at column {exc.colno}") from None


def list_entry(index: int, item: Any, fields: frozenset[str], shape: str) -> str:
    """Check one object of a JSON list setting: an object of known fields only. Returns how its
    errors name it ("entry N"); ValueError otherwise, `shape` saying what an entry holds."""
    where = f"entry {index + 1}"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object with {shape}")
    unknown = sorted(set(map(str, item)) - fields)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}")
    return where


def json_object(text: str) -> dict[Any, Any]:
    """The JSON object `text` holds; ValueError otherwise (echoing at most 80 characters)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"must be a JSON object: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object (got {text.strip()[:80]!r})")
    return value


def _destination(key: object) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"destination must be a non-empty string (got {key!r})")
    return key.strip().lower()


def _split_host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):
        host, sep, port_text = item[1:].partition("]:")
        if not sep or ":" not in host:
            raise ValueError(f"must be [ipv6]:port (got {item!r})")
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep:
            raise ValueError(f"must be host:port (got {item!r})")
    if not _is_number(port_text):
        raise ValueError(f"port must be a number (got {item!r})")
    port = int(port_text)
    _check_port(port)
    return host, port


def _check_port(port: int) -> None:
    if not 1 <= port <= _MAX_PORT:
        raise ValueError(f"port must be 1..{_MAX_PORT} (got {port})")
