"""Routing: which destination a recipient belongs to, which shard serves it, and the queue names.

A destination is where a recipient's mail goes, as MAILROOM_ROUTES (settings/routes.py) or,
for a domain no route names, MAILROOM_DELIVERY says: the recipient's domain as a lower-case IDNA
A-label for its MX hosts, the literal `relay` for the relay, `smtp://host:port` for a fixed
server. Connections, limits and shards follow the destination. Its shard is a jump consistent
hash (Lamping & Veach, 2014) of a blake2b key, so every process agrees on it and growing
MAILROOM_SHARDS from N to N+1 moves only about 1/(N+1) of the destinations, all of them to the
new shard. Pure: no Celery, no network.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from settings import HopKind, Route, route_for
from tasks.notification import a_label_domain

INTAKE_QUEUE = "mailroom.intake"
DELIVER_TASK = "mailroom.deliver"
NOTIFY_TASK = "mailroom.notify"
RELAY_DESTINATION = "relay"

_SHARD_QUEUE_PREFIX = "mailroom.shard."
_MASK64 = (1 << 64) - 1
_LCG_MULTIPLIER = 2862933555777941757  # the 64-bit LCG of the jump consistent hash paper
_SHARD_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")  # [0-9], not \d: int() takes other digits


def destination_of(address: str, mode: str, routes: Mapping[str, Route] | None = None) -> str:
    """The destination of `address` under `routes`, else delivery `mode` ("mx" or "relay").

    :returns: the domain after the last "@", lower-case and IDNA A-label encoded, for MX
        delivery; `relay` for the relay; `smtp://host:port` for a route's fixed server.
    :raises ValueError: for an unknown mode, or an address without a valid domain (unless it
        goes to the relay by mode, with no routes to look it up in).
    """
    if mode not in ("mx", "relay"):
        raise ValueError(f"unknown delivery mode {mode!r} (expected 'mx' or 'relay')")
    if mode == "relay" and not routes:
        return RELAY_DESTINATION
    _, at, domain = address.rpartition("@")
    if not at:
        raise ValueError(f"{address!r} has no '@'")
    try:
        name = a_label_domain(domain)
    except ValueError as exc:
        raise ValueError(f"{address!r}: {exc}") from None
    route = route_for(routes or {}, name)
    kind = HopKind(mode) if route is None else route.kind
    if kind is HopKind.RELAY:
        return RELAY_DESTINATION
    if kind is HopKind.FIXED:
        assert route is not None  # only a route names a fixed server
        return route.server
    return name


def _key(destination: str) -> int:
    # Python's hash() is salted per process; every producer and worker must agree on the key.
    digest = hashlib.blake2b(destination.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def jump_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash of the 64-bit `key` into range(buckets).

    :raises ValueError: when `buckets` is below 1.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    key &= _MASK64
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * _LCG_MULTIPLIER + 1) & _MASK64
        # Floats as in the paper's C++ (double), so the sequence matches other implementations.
        jump = int((bucket + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return bucket


def shard_of(destination: str, shards: int) -> int:
    """The shard number, in range(shards), that serves `destination`.

    :raises ValueError: when `shards` is below 1.
    """
    return jump_hash(_key(destination), shards)


def shard_queue(shard: int) -> str:
    """The Celery queue name of shard `shard`: "mailroom.shard.{shard}"."""
    return f"{_SHARD_QUEUE_PREFIX}{shard}"


def all_shard_queues(shards: int) -> list[str]:
    """Every shard queue name, shard 0 first."""
    return [shard_queue(shard) for shard in range(shards)]


def parse_shards(spec: str, shards: int) -> list[int]:
    """Parse `mailroom worker --shards`, e.g. "0-3,7": numbers and inclusive ranges.

    :returns: the shard numbers, sorted, each once.
    :raises ValueError: with one line naming the problem: an empty spec or item, an item that
        is not a number or range, a reversed range, a number not below `shards`.
    """
    if not spec.strip():
        raise ValueError("--shards: empty (expected numbers and ranges, e.g. 0-3,7)")
    chosen: set[int] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"--shards: {spec!r} has an empty item")
        match = _SHARD_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"--shards: {item!r} is not a number or range")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if last < first:
            raise ValueError(f"--shards: range {item!r} is reversed")
        if last >= shards:
            raise ValueError(f"--shards: {last} is not below MAILROOM_SHARDS={shards}")
        chosen.update(range(first, last + 1))
    return sorted(chosen)
