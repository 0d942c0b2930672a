"""Deliver one message to one destination: resolve, walk the servers, one outcome per recipient.

The destination is a recipient domain (direct to its MX hosts) or the relay. Servers are tried
in MX preference order, every address of a host before the next host, as Postfix's smtp client
does: a recipient whose reply says "try elsewhere" (`outcome.try_next_host`) stays in play for
the next server, and only the last reply decides. Like Postfix's `smtp_mx_address_limit` and
`smtp_mx_session_limit`, at most `max_addresses` addresses are dialled and at most
`max_sessions` conversations that got a greeting are held per delivery. An opportunistic TLS
handshake that fails is retried on the same address in plaintext (Postfix's `may` level).
With connection reuse on, sessions take and park connections in the agent's `ConnectionPool`,
which also moves their connection-cap leases: a delivery holds a `Slot` for the connection it
may open, and asks the pool to fill it again when it needs a new connection after parking one.

This module is network-only: it touches no store; its `DeliveryReport` is applied elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from redis import RedisError

from settings import DeliveryMode, Settings
from workers.delivery.mx import MxResolver, Target, resolve_host
from workers.model.envelope import OutboundMessage
from workers.model.outcome import Deferred, Outcome, classify, try_next_host
from workers.model.reply import Code, Reply, Step, not_attempted
from workers.model.report import Attempt, DeliveryReport, StepRecord
from workers.model.throttling import Granted, Throttled, ThrottleReason
from workers.queue.leases import lease_ttl
from workers.smtp.connection import Connection
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.peer import Credentials, Errand, Peer
from workers.smtp.record import Timeouts
from workers.smtp.session import SessionResult, run_session
from workers.smtp.slot import Handover, Slot
from workers.smtp.tls_policy import TlsPolicy, opportunistic_policy, relay_policy
from workers.traffic.profiles import traffic

log = logging.getLogger(__name__)
T = TypeVar("T")

_WAIT = 30.0  # seconds a delivery waits for a connection when the cap is full
_RETRY = 1.0  # seconds before a delivery that found no connection is tried again
_MAX_LIFETIME = 300.0  # seconds a connection is reused at most (Postfix's reuse time limit)


@dataclass(frozen=True, slots=True)
class Relay:
    """The smarthost every message goes through in relay mode."""

    host: str
    port: int
    tls: TlsPolicy
    credentials: Credentials | None


class ConnectionCap(Protocol):
    """The cluster-wide connection cap (`workers.traffic.rate_limits.Limiter`): blocking Redis
    calls, which the agent runs in the event loop's executor."""

    def connection_lease(self, destination: str) -> Granted | Throttled: ...

    def release_lease(self, destination: str, lease: str) -> None: ...


class _Unfailing:
    """The cap as the agent and its pool use it: asking for a lease while Redis fails is a
    "not now", and a lease that cannot be given back a warning (it expires by itself). Never an
    exception out of a delivery: one part of it may already be accepted, and a delivery that
    raised would be deferred whole and that part sent twice."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap

    def connection_lease(self, destination: str) -> Granted | Throttled:
        try:
            return self._cap.connection_lease(destination)
        except RedisError as exc:
            log.warning("the connection cap of %s did not answer: %s", destination, exc)
            return Throttled(_RETRY, ThrottleReason.CONNECTIONS)

    def release_lease(self, destination: str, lease: str) -> None:
        try:
            self._cap.release_lease(destination, lease)
        except RedisError as exc:
            log.warning("a connection lease of %s expires instead: %s", destination, exc)


class RateGate(Protocol):
    """The cluster-wide rate gate (`workers.traffic.rate_limits.Limiter`), asked for each further
    message of a delivery split into parts; a blocking Redis call, run in the executor."""

    def acquire(self, destination: str, delivery_key: str) -> Granted | Throttled: ...


@dataclass(frozen=True, slots=True)
class Server:
    """One address of one host of a destination, as a session dials it."""

    destination: str
    host: str
    address: str
    port: int


class DeliveryAgent:
    """Runs deliveries; one per worker process, shared by every session on its event loop."""

    def __init__(
        self,
        *,
        resolver: MxResolver,
        mx_port: int,
        relay: Relay | None,
        helo: str,
        timeouts: Timeouts,
        mx_tls: TlsPolicy | None = None,
        max_addresses: int = 5,
        max_sessions: int = 2,
        max_recipients: int | None = None,
        pool: ConnectionPool | None = None,
        cap: ConnectionCap | None = None,
        rates: RateGate | None = None,
    ) -> None:
        self._resolver = resolver
        self._mx_port = mx_port
        self._relay = relay
        self._helo = helo
        self._timeouts = timeouts
        self._mx_tls = mx_tls or opportunistic_policy()
        self._max_addresses = max_addresses
        self._max_sessions = max_sessions
        self._max_recipients = max_recipients
        self._pool = pool
        self._cap = None if cap is None else _Unfailing(cap)
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
    ) -> DeliveryAgent:
        """Build the agent a worker process uses, from validated settings."""
        relay = None
        if settings.delivery is DeliveryMode.RELAY:
            assert settings.relay_host is not None  # settings validation guarantees it
            credentials = None
            if settings.relay_username and settings.relay_password is not None:
                credentials = Credentials(
                    settings.relay_username, settings.relay_password.get_secret_value()
                )
            relay = Relay(
                settings.relay_host,
                settings.relay_port,
                relay_policy(settings.relay_security.value, _path(settings.tls_ca_file)),
                credentials,
            )
        resolver = MxResolver(
            [(server.ip, server.port) for server in settings.dns_nameservers],
            port=settings.mx_port,
            timeout=settings.dns_timeout,
            deny_networks=settings.mx_deny_networks,
        )
        timeouts = Timeouts(
            connect=settings.connect_timeout,
            command=settings.command_timeout,
            data=settings.data_timeout,
            session=settings.session_timeout,
        )
        return cls(
            resolver=resolver,
            mx_port=settings.mx_port,
            relay=relay,
            helo=settings.helo_name,
            timeouts=timeouts,
            max_recipients=traffic(settings).max_recipients,
            pool=ConnectionPool(
                max_messages=settings.connection_max_messages,
                idle_timeout=settings.connection_idle_timeout,
                # A connection's cap lease must outlive it, through its last session too.
                max_lifetime=min(
                    _MAX_LIFETIME,
                    lease_ttl(settings.session_timeout, settings.visibility_timeout)
                    - settings.session_timeout,
                ),
            )
            if settings.connection_reuse
            else None,
            cap=cap,
            rates=rates,
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
        deadline = asyncio.get_running_loop().time() + self._timeouts.session
        unique = list(dict.fromkeys(recipients))
        size = self._max_recipients or len(unique) or 1
        parts: list[DeliveryReport] = []
        for start in range(0, len(unique), size):
            if parts and not probe:
                held = await self._rate_slot(message, destination, len(parts), deadline)
                if held is not None:
                    why = f"{held.held_by(destination)}, next slot in {held.retry_after:.1f} s"
                    rest = unique[start:]
                    parts.append(_gate_deferred(destination, rest, held.retry_after, why))
                    break
            part = unique[start : start + size]
            parts.append(await self._deliver(message, destination, part, probe, deadline))
        if not parts:
            parts.append(await self._deliver(message, destination, [], probe, deadline))
        outcomes = {o.recipient: o for part in parts for o in part.outcomes}
        return DeliveryReport(
            destination,
            tuple(outcomes[recipient] for recipient in recipients),
            parts[0].resolution,
            tuple(attempt for part in parts for attempt in part.attempts),
        )

    async def _rate_slot(
        self, message: OutboundMessage, destination: str, part: int, deadline: float
    ) -> Throttled | None:
        """Take a rate slot for part number `part` of a delivery: None once taken, else what
        holds it back when its slot comes too late for `deadline` (or Redis did not answer)."""
        if self._rates is None:
            return None
        key = f"{message.message_id}|{destination}|{part}"
        loop = asyncio.get_running_loop()
        while True:
            try:
                answer = await _blocking(self._rates.acquire, destination, key)
            except RedisError as exc:
                # Never an exception: the parts sent already must be recorded as sent.
                log.warning("the rate gate of %s did not answer: %s", destination, exc)
                return Throttled(_RETRY, ThrottleReason.RATE)
            if isinstance(answer, Granted):
                return None
            if loop.time() + answer.retry_after >= deadline:
                return answer
            # The slot is reserved for this key: asking again at its time takes it.
            await asyncio.sleep(answer.retry_after)

    async def _deliver(
        self,
        message: OutboundMessage,
        destination: str,
        recipients: list[str],
        probe: bool,
        deadline: float,
    ) -> DeliveryReport:
        """A connection to use first: one parked for `destination`, else a new one under the
        cap's lease, else (cap full) the first of this worker's to come free."""
        pool = None if probe else self._pool
        handover = None if pool is None else pool.take_parked(destination)
        slot = Slot(destination)
        if handover is None and (self._cap is None or probe):
            slot.hold(None)  # nothing to ask: no cap, or a probe (it never parks a connection)
        if handover is None and self._cap is not None and not probe:
            # Others already wait here: the cap is full, so queue behind them without asking.
            queued = pool is not None and pool.waiting(destination) > 0
            granted = None if queued else await _blocking(self._cap.connection_lease, destination)
            if isinstance(granted, Granted):
                slot.hold(granted.lease)
            else:
                # In-process waiting costs a future; a deferral costs a trip through Redis.
                # Half the session deadline at most: the other half is the session's own.
                wait = min(_WAIT, (deadline - asyncio.get_running_loop().time()) / 2)
                if pool is not None and wait > 0:
                    handover = await pool.take_any(destination, wait)
                if handover is None:
                    retry = granted.retry_after if granted is not None else _RETRY
                    full = f"connections limit of {destination}, none free"
                    return _gate_deferred(destination, recipients, retry, full)
        if handover is not None and handover.connection is not None:
            report = await self._on_handover(
                handover, message, destination, recipients, deadline, slot
            )
        else:
            if handover is not None:
                slot.hold(handover.lease)  # the cap's, asked for by the pool while this one waited
            report = await self._walk(message, destination, recipients, probe, deadline, slot)
        await self._free(slot)
        return report

    async def _free(self, slot: Slot) -> None:
        """Give back what `slot` still holds once its delivery ends (its connections, parked,
        keep their own leases)."""
        if self._pool is not None:
            await self._pool.free(slot)
        elif slot.lease is not None and self._cap is not None:
            await _blocking(self._cap.release_lease, slot.destination, slot.empty())

    async def _ready(self, slot: Slot) -> bool:
        """Whether a session may open a connection under `slot` (see `ConnectionPool.fill`);
        without a pool, the delivery's one lease covers each of its connections in turn."""
        return self._pool is None or await self._pool.fill(slot)

    async def _walk(
        self,
        message: OutboundMessage,
        destination: str,
        recipients: list[str],
        probe: bool,
        deadline: float,
        slot: Slot,
    ) -> DeliveryReport:
        """Resolve and try the servers in order, each session opening its connection under
        `slot`; stops early when no connection can be had under the cap."""
        started = time.perf_counter()
        targets = await self._targets(destination)
        resolution = _resolution_record(destination, targets, started)
        if isinstance(targets, Reply):
            outcomes = tuple(classify(recipient, targets) for recipient in recipients)
            return DeliveryReport(destination, outcomes, resolution, ())
        last: dict[str, Reply] = {}
        pending = list(dict.fromkeys(recipients))
        attempts: list[Attempt] = []
        sessions = 0
        for host, address, port in self._servers(targets):
            if not pending or sessions >= self._max_sessions:
                break
            if asyncio.get_running_loop().time() >= deadline:
                break
            result = await self._converse(
                Server(destination, host, address, port),
                message,
                pending,
                deadline,
                attempts,
                probe,
                slot,
            )
            if result is None:
                break  # the cap is full: the recipients keep their last replies
            sessions += result.greeted
            last.update(result.replies)
            pending = [recipient for recipient in pending if try_next_host(last[recipient])]
        outcomes = tuple(classify(r, last.get(r) or _untried()) for r in recipients)
        return DeliveryReport(destination, outcomes, resolution, tuple(attempts))

    async def _on_handover(
        self,
        handover: Handover,
        message: OutboundMessage,
        destination: str,
        recipients: list[str],
        deadline: float,
        slot: Slot,
    ) -> DeliveryReport:
        """One session on a connection that came free (a fresh one to the same server, under
        its lease, if RSET fails on it)."""
        key = handover.key
        assert key is not None  # a handed-over connection always has its key
        attempts: list[Attempt] = []
        result = await self._converse(
            Server(destination, key.host, key.address, key.port),
            message,
            recipients,
            deadline,
            attempts,
            False,
            slot,
            handover.connection,
        )
        replies = {} if result is None else result.replies
        outcomes = tuple(classify(r, replies.get(r) or _untried()) for r in recipients)
        resolution = StepRecord(
            "resolve",
            Reply(
                Code.OK, "2.0.0", f"{destination} -> {key.host} (open connection)", Step.RESOLVE_MX
            ),
            0.0,
        )
        return DeliveryReport(destination, outcomes, resolution, tuple(attempts))

    async def _targets(self, destination: str) -> tuple[Target, ...] | Reply:
        if self._relay is not None:
            target = await resolve_host(self._relay.host, self._relay.port)
            return target if isinstance(target, Reply) else (target,)
        return await self._resolver.resolve(destination)

    def _servers(self, targets: tuple[Target, ...]) -> list[tuple[str, str, int]]:
        servers = [(t.host, address, t.port) for t in targets for address in t.addresses]
        return servers[: self._max_addresses]

    async def _converse(
        self,
        server: Server,
        message: OutboundMessage,
        recipients: list[str],
        deadline: float,
        attempts: list[Attempt],
        probe: bool,
        slot: Slot,
        connection: Connection | None = None,
    ) -> SessionResult | None:
        """One conversation (appended to `attempts`), then a plaintext one if opportunistic
        TLS failed on it; returns the last, or None when the cap let none open."""
        relay = self._relay
        policy: TlsPolicy | None = relay.tls if relay is not None else self._mx_tls
        host, address = server.host, server.address
        result: SessionResult | None = None
        while True:
            if connection is None and not await self._ready(slot):
                return result
            at = datetime.now(UTC)
            peer = Peer(
                host,
                address,
                server.port,
                policy,
                self._helo,
                self._timeouts,
                relay.credentials if relay is not None else None,
                server.destination,
            )
            errand = Errand(message, recipients, deadline, probe, self._pool, slot, connection)
            result = await run_session(peer, errand)
            attempts.append(Attempt(at, host, address, result.steps))
            if not result.tls_failed or policy is None:
                return result
            policy, connection = None, None


async def _blocking(call: Callable[..., T], *args: Any) -> T:
    """Run a blocking (Redis) call off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, call, *args)


def _gate_deferred(
    destination: str, recipients: list[str], retry_after: float, why: str
) -> DeliveryReport:
    """A gate deferral (no attempt): the connection cap is full and none of this worker's
    connections came free in time, or a split delivery's later part got no rate slot in time."""
    reply = Reply(Code.LOCAL_ERROR, "4.4.5", f"throttled by Mailroom: {why}", Step.GATE)
    waiting: tuple[Outcome, ...] = tuple(Deferred(r, reply, retry_after) for r in recipients)
    return DeliveryReport(destination, waiting, StepRecord("gate", reply, 0.0), ())


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _untried() -> Reply:
    return not_attempted(Step.OPEN_SESSION, "no server could be tried before the deadline")


def _resolution_record(
    destination: str, targets: tuple[Target, ...] | Reply, started: float
) -> StepRecord:
    ms = (time.perf_counter() - started) * 1000
    if isinstance(targets, Reply):
        return StepRecord("resolve", targets, ms)
    found = ", ".join(f"{t.host}[{'/'.join(t.addresses)}]:{t.port}" for t in targets)
    return StepRecord(
        "resolve", Reply(Code.OK, "2.0.0", f"{destination} -> {found}", Step.RESOLVE_MX), ms
    )
