"""MAILROOM_ROUTES end to end: producer → Redis → a real Celery worker → the server each route
names (aiosmtpd sinks on 127.0.0.2 and 127.0.0.3), with destinations, shards and status records
following the route."""

from __future__ import annotations

import json

import redis

from tasks.routing import shard_of, shard_queue
from tests.support.smtp_sink import MakeSink
from tests.support.tls_material import TlsMaterial
from tests.tasks.conftest import Deploy
from tests.tasks.pipeline_support import SHARDS, queued_task_bodies, running_worker, wait_for
from workers.queue.status import StatusStore


def delivered(client: redis.Redis, message_id: str) -> bool:
    view = StatusStore(client, ttl=60).view(message_id)
    return view is not None and view["state"] == "delivered"


def test_each_domain_goes_to_the_server_its_route_names(
    redis_client: redis.Redis, deploy: Deploy, make_sink: MakeSink
) -> None:
    two = make_sink("127.0.0.2")
    three = make_sink("127.0.0.3")
    server_two = f"smtp://127.0.0.2:{two.port}"
    server_three = f"smtp://127.0.0.3:{three.port}"
    routes = {
        "a.test": f"{server_two}?tls=none",
        ".b.test": server_three,  # subdomains of b.test, opportunistic STARTTLS (none offered)
        "*": f"{server_two}?tls=none",
    }
    _settings, app, mailroom = deploy(routes=json.dumps(routes))
    message_id = mailroom.notify(
        sender="app@example.test",
        to=["x@a.test", "y@deep.sub.b.test", "z@b.test", "w@other.test"],
        subject="Routed",
        text="Hello",
    )

    # One destination per server, each on its server's shard.
    for server, count in ((server_two, 3), (server_three, 1)):
        [task] = queued_task_bodies(redis_client, shard_queue(shard_of(server, SHARDS)))
        items = [item for item in task["decoded_body"][0][0] if item[1] == server]
        assert items == [[message_id, server, 1]], count
    with running_worker(app):
        wait_for(lambda: delivered(redis_client, message_id), what="delivery")

    [to_two] = two.messages
    [to_three] = three.messages
    assert sorted(to_two.rcpt_tos) == ["w@other.test", "x@a.test", "z@b.test"]
    assert to_three.rcpt_tos == ("y@deep.sub.b.test",)
    view = StatusStore(redis_client, ttl=60).view(message_id)
    assert view is not None
    assert {r["address"]: r["destination"] for r in view["recipients"]} == {
        "x@a.test": server_two,
        "y@deep.sub.b.test": server_three,
        "z@b.test": server_two,
        "w@other.test": server_two,
    }


def test_a_worker_routes_domains_a_producer_queued_without_routes(
    redis_client: redis.Redis, deploy: Deploy, make_sink: MakeSink
) -> None:
    # scripts/run's catcher: the worker has the routes, `mailroom send` may not.
    catcher = make_sink("127.0.0.3")
    _settings, _app, producer = deploy()
    _settings, worker_app, _mailroom = deploy(
        routes=json.dumps({"*": f"smtp://127.0.0.3:{catcher.port}?tls=none"})
    )
    message_id = producer.notify(
        sender="app@example.test", to=["you@example.org"], subject="Caught", text="Hi"
    )

    with running_worker(worker_app):
        wait_for(lambda: delivered(redis_client, message_id), what="delivery")

    [caught] = catcher.messages
    assert caught.rcpt_tos == ("you@example.org",)
    view = StatusStore(redis_client, ttl=60).view(message_id)
    assert view is not None
    [recipient] = view["recipients"]
    assert recipient["destination"] == "example.org"
    [attempt] = view["attempts"]
    assert attempt["host"] == "127.0.0.3"


def test_a_tls_route_is_verified_and_a_starttls_route_is_opportunistic(
    redis_client: redis.Redis, deploy: Deploy, make_sink: MakeSink, tls: TlsMaterial
) -> None:
    verified = make_sink("127.0.0.1", implicit_tls_context=tls.server_context("localhost"))
    wrong = make_sink("127.0.0.2", implicit_tls_context=tls.server_context("elsewhere.test"))
    # Self-signed: an opportunistic route encrypts without verifying, as for MX hosts.
    anyone = make_sink("127.0.0.3", starttls_context=tls.self_signed_context("anyone.test"))
    routes = {
        "verified.test": f"smtp://localhost:{verified.port}?tls=tls",
        "wrong.test": f"smtp://127.0.0.2:{wrong.port}?tls=tls",
        "anyone.test": f"smtp://127.0.0.3:{anyone.port}",
    }
    _settings, app, mailroom = deploy(routes=json.dumps(routes), tls_ca_file=str(tls.ca_file))
    ids = {
        domain: mailroom.notify(
            sender="app@example.test", to=[f"x@{domain}"], subject="TLS", text="Hello"
        )
        for domain in routes
    }

    def settled() -> bool:
        views = [StatusStore(redis_client, ttl=60).view(i) for i in ids.values()]
        return all(v is not None and v["recipients"][0]["state"] != "queued" for v in views)

    with running_worker(app):
        wait_for(lambda: delivered(redis_client, ids["verified.test"]), what="verified")
        wait_for(lambda: delivered(redis_client, ids["anyone.test"]), what="opportunistic")
        wait_for(settled, what="the wrong name's deferral")

    [secure] = verified.sessions
    assert secure.tls
    assert [m.rcpt_tos for m in verified.messages] == [("x@verified.test",)]
    [opportunistic] = anyone.sessions
    assert opportunistic.tls
    assert [m.rcpt_tos for m in anyone.messages] == [("x@anyone.test",)]
    # A certificate for another name: nothing is sent, the recipient waits (421 4.7.5).
    assert wrong.messages == []
    view = StatusStore(redis_client, ttl=60).view(ids["wrong.test"])
    assert view is not None
    [recipient] = view["recipients"]
    assert (recipient["state"], recipient["code"], recipient["enhanced"]) == (
        "deferred", 421, "4.7.5",
    )  # fmt: skip
