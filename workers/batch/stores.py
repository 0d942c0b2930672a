"""The queue's Redis state a batch works on, handed to the runner as one value."""

from __future__ import annotations

from dataclasses import dataclass

from workers.queue.content import ContentStore
from workers.queue.deferred import DeferredSet
from workers.queue.disposition import Disposition
from workers.queue.leases import Leases
from workers.queue.status import StatusStore
from workers.queue.suppression import Suppression
from workers.traffic.rate_limits import Limiter
from workers.traffic.relay_hold import RelayHolds


@dataclass(frozen=True)
class BatchStores:
    """Where a batch claims, gates, reads and records its deliveries; no `limiter`, no rate gate
    and no throttling penalties; `holds`: the relay's hold record (relay mode with AUTH);
    `suppression`: where hard-bounced addresses go (none: they are not listed)."""

    content: ContentStore
    status: StatusStore
    leases: Leases
    deferred: DeferredSet
    disposition: Disposition
    limiter: Limiter | None = None
    holds: RelayHolds | None = None
    suppression: Suppression | None = None
