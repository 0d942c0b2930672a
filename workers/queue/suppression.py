"""The suppression list: addresses never sent to again, because they hard-bounced
(`workers.model.hard_bounce`) or an operator listed them.

Key:
    mailroom:suppressed   hash address (ASCII letters lower-cased) → entry JSON {"address",
                          "reason", "code", "enhanced", "source", "since", "expires",
                          "message_id"}; no TTL of its own

An entry lives for SUPPRESSION_TTL days (`expires`, a UNIX time; null: for ever). An expired
entry counts as absent wherever it is read, and `entries` drops the expired ones it meets, so the
list needs no sweeper. Workers read the list inside the status claim (`StatusStore.claims`): a
suppressed recipient costs no round trip of its own and never opens a connection.

Addresses match with ASCII letters folded to lower case, as the claim script's `string.lower`
folds them: domains are case-insensitive, and no real mailbox differs from another by case alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis

from workers.model.hard_bounce import is_hard_bounce
from workers.model.outcome import Bounced
from workers.model.reply import Reply, Step
from workers.model.report import DeliveryReport

_log = logging.getLogger(__name__)

KEY = "mailroom:suppressed"
_DAY = 86400
_SCAN_COUNT = 500
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# The reply a suppressed recipient's record keeps: Mailroom's own, permanent, never sent.
_CODE = 550
_ENHANCED = "5.7.1"


def list_key(address: str) -> str:
    """The field an address is listed under."""
    return address.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class Entry:
    """Why and since when an address is suppressed, and until when (None: for ever)."""

    address: str
    reason: str
    source: str  # "bounce", "operator" (suppression add) or "import"
    since: float  # UNIX time
    expires: float | None = None
    code: int | None = None  # the bounce's reply, when a bounce listed it
    enhanced: str = ""
    message_id: str = ""

    def active(self, now: float) -> bool:
        return self.expires is None or self.expires > now

    def reply(self) -> Reply:
        """What a suppressed recipient's status record says: the entry's reason and date."""
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        text = f"on the suppression list since {since} ({self.source}): {self.reason}"
        return Reply(_CODE, self.enhanced or _ENHANCED, text, Step.GATE)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


def entry_of(raw: bytes | str) -> Entry | None:
    """The entry a list field holds; None for a value that is not one (never raises)."""
    try:
        value = json.loads(raw)
        return Entry(
            address=str(value["address"]),
            reason=str(value.get("reason", "")),
            source=str(value.get("source", "operator")),
            since=float(value["since"]),
            expires=None if value.get("expires") is None else float(value["expires"]),
            code=None if value.get("code") is None else int(value["code"]),
            enhanced=str(value.get("enhanced", "")),
            message_id=str(value.get("message_id", "")),
        )
    except (ValueError, TypeError, KeyError):
        return None


def bounce_entry(
    address: str, reply: Reply, message_id: str, now: float, ttl_days: int | None
) -> Entry:
    """The entry a hard bounce makes: the reply that caused it, with its codes."""
    return Entry(
        address=address,
        reason=str(reply),
        source="bounce",
        since=now,
        expires=expiry(now, ttl_days),
        code=reply.code,
        enhanced=reply.enhanced,
        message_id=message_id,
    )


def expiry(now: float, ttl_days: int | None) -> float | None:
    """When an entry made now expires under SUPPRESSION_TTL (None: it never does)."""
    return None if ttl_days is None else now + ttl_days * _DAY


# KEYS: the list. ARGV: (field, value) pairs of expired entries. Each is removed only if it still
# holds that value: an address listed again meanwhile stays listed.
_PRUNE = """
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
"""


class SuppressionList:
    """Reads and writes the suppression list."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._prune = client.register_script(_PRUNE)

    def add(self, entries: Sequence[Entry]) -> None:
        """List the entries' addresses, replacing what was there (one round trip)."""
        if entries:
            mapping = {list_key(entry.address): entry.to_json() for entry in entries}
            self._redis.hset(KEY, mapping=mapping)  # type: ignore[arg-type]

    def remove(self, addresses: Sequence[str]) -> list[str]:
        """Take addresses off the list; returns those that were on it (one round trip)."""
        if not addresses:
            return []
        fields = [list_key(address) for address in addresses]
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(KEY, fields)
            pipe.hdel(KEY, *fields)
            found, _ = pipe.execute()
        return [address for address, raw in zip(addresses, found, strict=True) if raw is not None]

    def get(self, address: str, now: float) -> Entry | None:
        """The active entry of one address, or None."""
        raw = self._redis.hget(KEY, list_key(address))
        entry = None if raw is None else entry_of(raw)
        return entry if entry is not None and entry.active(now) else None

    def entries(self, now: float) -> Iterator[Entry]:
        """Every active entry, in no particular order; the expired ones met are removed."""
        expired: list[bytes | str] = []
        for field, raw in self._redis.hscan_iter(KEY, count=_SCAN_COUNT):
            entry = entry_of(raw)
            if entry is not None and entry.active(now):
                yield entry
            elif entry is not None:
                expired += [field, raw]
            if len(expired) >= 2 * _SCAN_COUNT:
                self._prune(keys=[KEY], args=expired)
                expired = []
        if expired:
            self._prune(keys=[KEY], args=expired)

    def size(self) -> int:
        """Entries on the list, the expired ones not yet removed included."""
        return int(self._redis.hlen(KEY))


def active_entries(raw: Iterable[tuple[str, bytes | str]], now: float) -> dict[str, Entry]:
    """Address → entry, for the (address, stored value) pairs whose entry is active."""
    found = {}
    for address, value in raw:
        entry = entry_of(value)
        if entry is not None and entry.active(now):
            found[address] = entry
    return found


class Suppression:
    """What the workers do with the list: add the addresses that hard-bounced, for `ttl_days`
    (None: for ever)."""

    def __init__(self, listing: SuppressionList, ttl_days: int | None) -> None:
        self._list = listing
        self._ttl_days = ttl_days

    def entries_for(self, message_id: str, report: DeliveryReport, now: float) -> list[Entry]:
        """The entries a delivery's hard bounces make."""
        return [
            bounce_entry(o.recipient, o.reply, message_id, now, self._ttl_days)
            for o in report.outcomes
            if isinstance(o, Bounced) and is_hard_bounce(o.reply)
        ]

    def add(self, entries: Sequence[Entry]) -> None:
        """List them; best effort, after the status records: a lost entry costs one more
        bounce from the same address, never a message."""
        if not entries:
            return
        try:
            self._list.add(entries)
        except redis.RedisError as exc:
            _log.warning("%d hard-bounced addresses not suppressed: %s", len(entries), exc)
