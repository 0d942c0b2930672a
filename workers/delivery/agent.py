"""Deliver one message to one destination: one outcome per recipient.

The destination is a recipient domain (direct to its MX hosts) or the relay. A delivery is sent
in parts of at most `max_recipients` recipients, each part one message; each part first gets a
connection: one parked for the destination, else a new one under the connection cap's lease,
else (cap full) the first of this worker's to come free (`workers.delivery.gate`). Then the
part walks the destination's servers (`workers.delivery.walk`). With connection reuse on,
sessions take and park connections in the agent's `ConnectionPool`, which also moves their
connection-cap leases: a delivery holds a `Slot` for the connection it may open.

This module is network-only: it touches no store; its `DeliveryReport` is applied elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import redis

from settings import Settings
from workers.delivery.config import AgentConfig
from workers.delivery.gate import (
    RETRY,
    ConnectionCap,
    RateGate,
    Unfailing,
    blocking,
    gate_deferred,
    rate_slot,
)
from workers.delivery.relay_access import Admitted, RelayAccess, waiting_report
from workers.delivery.setup import agent_config, connection_pool
from workers.delivery.walk import Delivery, Walk
from workers.model.envelope import OutboundMessage
from workers.model.report import DeliveryReport
from workers.model.throttling import Granted, Throttled
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.slot import Slot

_WAIT = 30.0  # seconds a delivery waits for a connection when the cap is full


class DeliveryAgent:
    """Runs deliveries; one per worker process, shared by every session on its event loop."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        pool: ConnectionPool | None = None,
        cap: ConnectionCap | None = None,
        rates: RateGate | None = None,
        access: RelayAccess | None = None,
    ) -> None:
        self._config = config
        self._access = access
        self._pool = pool
        self._cap = None if cap is None else Unfailing(cap)
        self._rates = rates
        if pool is not None and self._cap is not None:
            # A closed connection's lease goes back to Redis; a new one is asked for while
            # deliveries wait for a connection.
            pool.use_cap(self._cap.connection_lease, self._cap.release_lease)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        cap: ConnectionCap | None = None,
        rates: RateGate | None = None,
        access: RelayAccess | None = None,
        client: redis.Redis | None = None,
    ) -> DeliveryAgent:
        """Build the agent a worker process uses, from validated settings; `access` gives relay
        deliveries their login (an access token) and holds the relay when it fails; `client`
        (the cluster's Redis) keeps the recipient domains' MTA-STS policies."""
        return cls(
            agent_config(settings, client),
            pool=connection_pool(settings),
            cap=cap,
            rates=rates,
            access=access,
        )

    @property
    def pool(self) -> ConnectionPool | None:
        """The agent's parked connections, when connection reuse is on."""
        return self._pool

    async def close(self) -> None:
        """QUIT every parked connection (worker shutdown)."""
        if self._pool is not None:
            await self._pool.close()

    async def deliver(
        self,
        message: OutboundMessage,
        destination: str,
        recipients: Sequence[str],
        *,
        probe: bool = False,
    ) -> DeliveryReport:
        """Deliver `message` to `recipients`, all of `destination`; never raises for the network.

        Returns one outcome per recipient, in the order given. A `probe` stops each session
        after RCPT TO, so nothing is sent (`mailroom check`). With `max_recipients` (a relay
        profile's limit), the recipients are sent in that many per message, one after another.

        The whole delivery, every part included, ends within one `session` timeout (so within
        its lease). Each part is one more message to the destination: the first one's rate slot
        is the batch's, each further one takes its own, waiting for it on the loop when it comes
        before the deadline; otherwise the rest of the recipients are deferred to that slot.
        """
        deadline = asyncio.get_running_loop().time() + self._config.timeouts.session
        delivery = Delivery(message, destination, deadline, probe)
        unique = list(dict.fromkeys(recipients))
        size = self._config.max_recipients or len(unique) or 1
        parts: list[DeliveryReport] = []
        for start in range(0, len(unique), size):
            if parts and not probe:
                held = await self._rate_slot(delivery, len(parts))
                if held is not None:
                    why = f"{held.held_by(destination)}, next slot in {held.retry_after:.1f} s"
                    rest = unique[start:]
                    parts.append(gate_deferred(destination, rest, held.retry_after, why))
                    break
            part = unique[start : start + size]
            parts.append(await self._deliver(delivery, part))
        if not parts:
            parts.append(await self._deliver(delivery, []))
        outcomes = {o.recipient: o for part in parts for o in part.outcomes}
        return DeliveryReport(
            destination,
            tuple(outcomes[recipient] for recipient in recipients),
            parts[0].resolution,
            tuple(attempt for part in parts for attempt in part.attempts),
            next((part.mta_sts_failure for part in parts if part.mta_sts_failure), None),
        )

    async def _rate_slot(self, delivery: Delivery, part: int) -> Throttled | None:
        """Take a rate slot for part number `part` of a delivery (see `gate.rate_slot`)."""
        if self._rates is None:
            return None
        key = f"{delivery.message.message_id}|{delivery.destination}|{part}"
        return await rate_slot(self._rates, delivery.destination, key, delivery.deadline)

    async def _deliver(self, delivery: Delivery, recipients: list[str]) -> DeliveryReport:
        """One part: through `RelayAccess` to the relay (admitted, then tried once more with a
        fresh token when the relay refused the one it had), straight on otherwise."""
        access = self._access
        if access is None or not self._config.relayed(delivery.destination):
            return await self._connect(delivery, recipients)
        admitted = await access.admit(probe=delivery.probe)
        for _ in range(2):  # the first try, and one with a renewed token
            if not isinstance(admitted, Admitted):
                return waiting_report(delivery.destination, recipients, admitted)
            tried = replace(delivery, login=admitted.login)
            report = await self._connect(tried, recipients)
            settled = await access.settle(admitted, report, probe=delivery.probe)
            if not isinstance(settled, Admitted):
                return settled
            admitted = settled
        raise AssertionError("settle renews a token only once")

    async def _connect(self, delivery: Delivery, recipients: list[str]) -> DeliveryReport:
        """A connection to use first: one parked for the destination, else a new one under the
        cap's lease, else (cap full) the first of this worker's to come free."""
        destination, probe, deadline = delivery.destination, delivery.probe, delivery.deadline
        pool = None if probe else self._pool
        handover = None if pool is None else pool.take_parked(destination)
        slot = Slot(destination)
        if handover is None and (self._cap is None or probe):
            slot.hold(None)  # nothing to ask: no cap, or a probe (it never parks a connection)
        if handover is None and self._cap is not None and not probe:
            # Others already wait here: the cap is full, so queue behind them without asking.
            queued = pool is not None and pool.waiting(destination) > 0
            granted = None if queued else await blocking(self._cap.connection_lease, destination)
            if isinstance(granted, Granted):
                slot.hold(granted.lease)
            else:
                # In-process waiting costs a future; a deferral costs a trip through Redis.
                # Half the session deadline at most: the other half is the session's own.
                wait = min(_WAIT, (deadline - asyncio.get_running_loop().time()) / 2)
                if pool is not None and wait > 0:
                    handover = await pool.take_any(destination, wait)
                if handover is None:
                    retry = granted.retry_after if granted is not None else RETRY
                    full = f"connections limit of {destination}, none free"
                    return gate_deferred(destination, recipients, retry, full)
        walk = Walk(self._config, self._pool, delivery, slot)
        if handover is not None and handover.connection is not None:
            report = await walk.resume(handover, recipients)
        else:
            if handover is not None:
                slot.hold(handover.lease)  # the cap's, asked for by the pool while this one waited
            report = await walk.run(recipients)
        await self._free(slot)
        return report

    async def _free(self, slot: Slot) -> None:
        """Give back what `slot` still holds once its delivery ends (its connections, parked,
        keep their own leases)."""
        if self._pool is not None:
            await self._pool.free(slot)
        elif slot.lease is not None and self._cap is not None:
            await blocking(self._cap.release_lease, slot.destination, slot.empty())
