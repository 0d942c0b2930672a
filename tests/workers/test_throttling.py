"""Who a receiver's reply slows down, and how a throttled delivery shows in its status record.

Real deliveries (dnsmasq: implicit.test → 127.0.0.5, an aiosmtpd sink there) through a
`BatchRunner` with a real `Limiter` on a real Redis: a greylisted recipient defers itself only,
a server-wide 421 slows the whole destination down, and a delivery the slow-down holds back is
`deferred` with its reason and next attempt, in `mailroom status` text and JSON alike.
"""

from __future__ import annotations

import time
from datetime import datetime

import redis

from tasks.cli.status import as_lines
from tests.support.dns_server import DnsServer
from tests.support.smtp_sink import MakeSink
from workers.batch import BatchRunner, BatchStores, Item
from workers.delivery.agent import DeliveryAgent
from workers.delivery.config import AgentConfig
from workers.delivery.mx import MxResolver
from workers.model.envelope import outbound
from workers.queue.content import ContentStore
from workers.queue.dead_letters import DeadLetters
from workers.queue.deferred import DeferredSet
from workers.queue.disposition import Disposition
from workers.queue.leases import Leases
from workers.queue.retry_schedule import RetryPolicy
from workers.queue.status import StatusStore
from workers.runtime import runtime
from workers.smtp.record import Timeouts
from workers.traffic.rate_limits import Limiter

DESTINATION = "implicit.test"
SLOWDOWN_KEY = f"mailroom:rate:slow:{DESTINATION}"


def _runner(client: redis.Redis, dns_server: DnsServer, mx_port: int) -> BatchRunner:
    status = StatusStore(client, ttl=3600)
    deferred = DeferredSet(client)
    agent = DeliveryAgent(
        AgentConfig(
            resolver=MxResolver([dns_server.address], port=mx_port, timeout=2),
            mx_port=mx_port,
            relay=None,
            helo="client.mailroom.test",
            timeouts=Timeouts(connect=1, command=2, data=3, session=5),
        )
    )
    stores = BatchStores(
        content=ContentStore(client, ttl=3600),
        status=status,
        leases=Leases(client, ttl=30),
        deferred=deferred,
        disposition=Disposition(
            status, deferred, DeadLetters(client, 3600), retry=RetryPolicy((60,), 3600)
        ),
        limiter=Limiter(client, rates={}, connections={}, lease_ttl=30),
    )
    return BatchRunner(agent=agent, stores=stores, submit=runtime().submit)


def _queue(client: redis.Redis, message_id: str, *recipients: str) -> Item:
    StatusStore(client, ttl=3600).create(
        message_id, "app@x.test", dict.fromkeys(recipients, DESTINATION), time.time()
    )
    data = f"Message-ID: <{message_id}@x.test>\r\nSubject: {message_id}\r\n\r\nhi\r\n"
    ContentStore(client, ttl=3600).put(
        outbound(message_id, "app@x.test", data.encode(), smtputf8=False)
    )
    return Item(message_id, DESTINATION, 1)


def _recipients(client: redis.Redis, message_id: str) -> dict[str, dict[str, object]]:
    view = StatusStore(client, ttl=3600).view(message_id)
    assert view is not None
    return {str(r["address"]): r for r in view["recipients"]}


def test_a_greylisted_recipient_defers_itself_only(
    redis_client: redis.Redis, dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    sink = make_sink("127.0.0.5", port=mx_port)
    runner = _runner(redis_client, dns_server, mx_port)
    grey = _queue(redis_client, "grey", f"451-greylist@{DESTINATION}", f"ok@{DESTINATION}")

    runner.run([grey])

    assert not redis_client.exists(SLOWDOWN_KEY)
    states = {a: r["state"] for a, r in _recipients(redis_client, "grey").items()}
    assert states == {f"451-greylist@{DESTINATION}": "deferred", f"ok@{DESTINATION}": "delivered"}
    # Five unrelated messages right after it go out at once, none held back by a slow-down.
    others = [_queue(redis_client, f"m{n}", f"user{n}@{DESTINATION}") for n in range(5)]
    handled = runner.run(others)
    assert [str(h.summary) for h in handled] == ["1 delivered"] * 5
    assert len(sink.messages) == 6


def test_a_421_slows_the_destination_and_the_held_delivery_says_why_and_until_when(
    redis_client: redis.Redis, dns_server: DnsServer, mx_port: int, make_sink: MakeSink
) -> None:
    make_sink(
        "127.0.0.5",
        port=mx_port,
        mail_from_reply="421 4.7.0 Try again later, closing connection",
        mail_from_reply_first=1,
    )
    runner = _runner(redis_client, dns_server, mx_port)
    runner.run([_queue(redis_client, "first", f"a@{DESTINATION}")])
    assert redis_client.exists(SLOWDOWN_KEY)

    before = time.time()
    runner.run([_queue(redis_client, "held", f"b@{DESTINATION}")])

    [held] = _recipients(redis_client, "held").values()
    assert held["state"] == "deferred"
    reason = str(held["throttled"])
    assert f"slowed down after 421 4.7.0 from {DESTINATION}" in reason
    assert "rate limit" not in reason  # no RATE_LIMITS entry: the slow-down held it back
    assert (held["code"], held["enhanced"]) == (451, "4.4.5")
    next_attempt = datetime.fromisoformat(str(held["next_attempt"])).timestamp()
    assert before < next_attempt <= time.time() + 1.5
    view = StatusStore(redis_client, ttl=3600).view("held")
    assert view is not None
    assert view["state"] == "in_progress"
    assert view["attempts"] == []  # held back before any connection: not an attempt
    [line] = [line for line in as_lines(view, time.time()) if f"b@{DESTINATION}" in line]
    assert "deferred" in line
    assert f"slowed down after 421 4.7.0 from {DESTINATION}" in line
    assert f"next attempt {held['next_attempt']}" in line
