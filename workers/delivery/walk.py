"""The walk over a destination's servers for one part of a delivery: resolve, then try each
server in turn until every recipient has a reply that decides.

Servers are tried in MX preference order, every address of a host before the next host, as
Postfix's smtp client does: a recipient whose reply says "try elsewhere"
(`outcome.try_next_host`) stays in play for the next server, and only the last reply decides. At
most `max_addresses` addresses are dialled and at most `max_sessions` conversations that got a
greeting are held. An opportunistic TLS handshake that fails is retried on the same address in
plaintext (Postfix's `may` level). Each session opens its connection under the delivery's
`Slot`, which the pool fills again when a new connection is needed after parking one.

A recipient domain's MTA-STS policy (RFC 8461 §4, `workers.delivery.mta_sts`) narrows the walk
for direct MX delivery: in mode `enforce`, only the MX hosts it names, each with STARTTLS and a
certificate verified for the host's name (no plaintext retry); in mode `testing`, every MX host,
its certificate verified when it offers STARTTLS and, when that fails, the same address retried
with unverified TLS: a shortfall is only logged and counted (`mta_sts_failure`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from workers.delivery.config import AgentConfig
from workers.delivery.mta_sts_policy import Mode, Policy
from workers.delivery.mx import Target, resolve_host
from workers.model.envelope import OutboundMessage
from workers.model.outcome import classify, try_next_host
from workers.model.reply import Code, Reply, Step, mta_sts_no_mx, not_attempted
from workers.model.report import Attempt, DeliveryReport, StepRecord
from workers.smtp.connection import Connection
from workers.smtp.connection_pool import ConnectionPool
from workers.smtp.peer import Errand, Login, Peer
from workers.smtp.session import SessionResult, run_session
from workers.smtp.slot import Handover, Slot
from workers.smtp.tls_policy import TlsMode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one destination, and when the whole delivery must be over (an event-loop
    time). A `probe` stops each session after RCPT TO, so nothing is sent. `login`: the relay
    account to use instead of the configured one (an access token the agent fetched)."""

    message: OutboundMessage
    destination: str
    deadline: float
    probe: bool = False
    login: Login | None = None


class Walk:
    """One part of a delivery: its sessions, in order, each opening its connection under `slot`
    (see `ConnectionPool.fill`); the attempts they made."""

    def __init__(
        self, config: AgentConfig, pool: ConnectionPool | None, delivery: Delivery, slot: Slot
    ) -> None:
        self._config = config
        self._pool = pool
        self._delivery = delivery
        self._slot = slot
        self._attempts: list[Attempt] = []
        self._sts_failure: str | None = None  # the policy's mode when it was not met

    async def run(self, recipients: Sequence[str]) -> DeliveryReport:
        """Resolve and try the servers in order; stops early when no connection can be had
        under the cap."""
        config, delivery = self._config, self._delivery
        destination, deadline = delivery.destination, delivery.deadline
        started = time.perf_counter()
        targets = await self._targets()
        policy: Policy | None = None
        if not isinstance(targets, Reply):
            targets, policy = await self._under_policy(targets)
        resolution = _resolution_record(destination, targets, started)
        if isinstance(targets, Reply):
            outcomes = tuple(classify(recipient, targets) for recipient in recipients)
            return DeliveryReport(destination, outcomes, resolution, (), self._sts_failure)
        last: dict[str, Reply] = {}
        pending = list(dict.fromkeys(recipients))
        sessions = 0
        for host, address, port in self._servers(targets):
            if not pending or sessions >= config.max_sessions:
                break
            if asyncio.get_running_loop().time() >= deadline:
                break
            peer = config.peer(destination, host, address, port, delivery.login)
            if policy is not None and config.mta_sts is not None:
                peer = replace(peer, tls=config.mta_sts.tls(policy, destination))
            result = await self._converse(peer, pending)
            if result is None:
                break  # the cap is full: the recipients keep their last replies
            sessions += result.greeted
            last.update(result.replies)
            pending = [recipient for recipient in pending if try_next_host(last[recipient])]
        outcomes = tuple(classify(r, last.get(r) or _untried()) for r in recipients)
        if policy is not None and self._sts_failure is None:
            plain = _without_tls(self._attempts)
            if plain is not None:
                self._fell_short(policy, f"{plain} gave no TLS session")
        attempts = tuple(self._attempts)
        return DeliveryReport(destination, outcomes, resolution, attempts, self._sts_failure)

    async def _under_policy(
        self, targets: tuple[Target, ...]
    ) -> tuple[tuple[Target, ...] | Reply, Policy | None]:
        """The MX hosts the destination's MTA-STS policy lets this delivery use, and the policy
        in force (None: none, or mode none). `enforce` keeps only the hosts its `mx` patterns
        name (none: the delivery is deferred); `testing` keeps them all and notes the shortfall."""
        sts = self._config.mta_sts
        destination = self._delivery.destination
        if sts is None or self._config.hop(destination) is not None:
            return targets, None  # MTA-STS is for direct MX delivery only
        known = await sts.policy(destination)
        policy = known.policy
        if policy is None or policy.mode is Mode.NONE:
            return targets, None
        allowed = tuple(target for target in targets if policy.allows(target.host))
        if len(allowed) < len(targets):
            others = ", ".join(t.host for t in targets if not policy.allows(t.host))
            self._fell_short(policy, f"MX hosts not in its mx patterns: {others}")
        if policy.mode is Mode.TESTING:
            return targets, policy
        if not allowed:
            return mta_sts_no_mx(destination, ", ".join(t.host for t in targets)), policy
        return allowed, policy

    def _fell_short(self, policy: Policy, why: str) -> None:
        """Note (and log) that this delivery did not meet the destination's policy."""
        if self._sts_failure is None:
            self._sts_failure = policy.mode.value
        log.warning(
            "MTA-STS policy of %s (%s) not met: %s",
            self._delivery.destination,
            policy.mode.value,
            why,
        )

    async def resume(self, handover: Handover, recipients: Sequence[str]) -> DeliveryReport:
        """One session on a connection that came free (a fresh one to the same server, under
        its lease, if RSET fails on it)."""
        key = handover.key
        assert key is not None  # a handed-over connection always has its key
        destination = self._delivery.destination
        peer = self._config.peer(destination, key.host, key.address, key.port, self._delivery.login)
        result = await self._converse(peer, recipients, handover.connection)
        replies = {} if result is None else result.replies
        outcomes = tuple(classify(r, replies.get(r) or _untried()) for r in recipients)
        resolution = StepRecord(
            "resolve",
            Reply(
                Code.OK, "2.0.0", f"{destination} -> {key.host} (open connection)", Step.RESOLVE_MX
            ),
            0.0,
        )
        return DeliveryReport(destination, outcomes, resolution, tuple(self._attempts))

    async def _converse(
        self, peer: Peer, recipients: Sequence[str], connection: Connection | None = None
    ) -> SessionResult | None:
        """One conversation (its attempt recorded), then a plaintext one if opportunistic TLS
        failed on it; returns the last, or None when the cap let none open."""
        delivery = self._delivery
        result: SessionResult | None = None
        while True:
            if connection is None and not await self._ready():
                return result
            at = datetime.now(UTC)
            errand = Errand(
                delivery.message,
                recipients,
                delivery.deadline,
                delivery.probe,
                self._pool,
                self._slot,
                connection,
            )
            result = await run_session(peer, errand)
            self._attempts.append(Attempt(at, peer.host, peer.address, result.steps))
            if not result.tls_failed or peer.tls is None:
                return result
            if peer.tls.mode is TlsMode.VERIFIED_MAY:
                peer = replace(peer, tls=self._config.mx_tls)  # noticed; now as without a policy
            else:
                peer = peer.plaintext()
            connection = None

    async def _ready(self) -> bool:
        """Whether a session may open a connection under the slot; without a pool, the
        delivery's one lease covers each of its connections in turn."""
        return self._pool is None or await self._pool.fill(self._slot)

    async def _targets(self) -> tuple[Target, ...] | Reply:
        destination = self._delivery.destination
        server = self._config.hop(destination)
        if isinstance(server, Reply):
            return server
        if server is not None:
            target = await resolve_host(server.host, server.port)
            return target if isinstance(target, Reply) else (target,)
        return await self._config.resolver.resolve(destination)

    def _servers(self, targets: tuple[Target, ...]) -> list[tuple[str, str, int]]:
        servers = [(t.host, address, t.port) for t in targets for address in t.addresses]
        return servers[: self._config.max_addresses]


def _without_tls(attempts: Sequence[Attempt]) -> str | None:
    """The first server that greeted a session which then ran (or ended) without STARTTLS
    succeeding, as "host[address]"; None when every greeted session had TLS."""
    for attempt in attempts:
        greeted = any(s.command in ("EHLO", "HELO") for s in attempt.steps)
        secured = any(s.command == "STARTTLS" and s.reply.reply_class == 2 for s in attempt.steps)
        if greeted and not secured:
            return f"{attempt.host}[{attempt.address}]"
    return None


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
