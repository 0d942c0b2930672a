"""Redis clients against a real redis-server that stops answering (SIGSTOP) and comes back."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from settings import Settings
from tasks.api import Mailroom
from tasks.app import make_celery
from tasks.worker_app import WorkerContext
from tests.support.redis_server import RedisServer, RedisServerFactory
from workers.queue.redis_client import redis_client

_HANG = 20.0  # seconds after which a call is taken to hang (unbounded clients wait ~a minute)


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server frozen (SIGSTOP): connections stay open, nothing is answered."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def outcome_of(call: Callable[[], object]) -> BaseException | None:
    """Run `call` in a thread; the exception it raised (None: it returned), or fail if it hangs."""
    raised: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            raised.append(None)
        except BaseException as exc:  # handed to the test to assert on
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(_HANG)
    assert not thread.is_alive(), f"the call still blocks after {_HANG} s"
    return raised[0]


@pytest.fixture
def server(make_redis_server: RedisServerFactory) -> RedisServer:
    return make_redis_server()


def test_a_frozen_redis_fails_a_command_and_the_client_recovers(server: RedisServer) -> None:
    client = redis_client(server.url, timeout=0.3)
    try:
        client.set("k", "before")
        with stopped(server):
            assert isinstance(outcome_of(lambda: client.get("k")), redis.TimeoutError)
        assert client.get("k") == b"before"  # the same client works again once Redis does
    finally:
        client.close()


def test_the_worker_and_producer_clients_are_bounded(server: RedisServer) -> None:
    settings = Settings(redis_url=server.url, redis_timeout=0.3, helo_name="mailroom.test")
    context = WorkerContext(settings, make_celery(settings))
    client = context.client()
    producer = Mailroom(settings)  # a client of its own
    client.ping()
    with stopped(server):
        assert isinstance(outcome_of(client.ping), redis.TimeoutError)
        assert isinstance(outcome_of(lambda: producer.withdraw("nope")), redis.TimeoutError)
    assert client.ping()


def test_broker_connections_get_timeouts_and_keepalive(server: RedisServer) -> None:
    # kombu hands these to redis-py for every broker connection (the consumer's BRPOP included).
    settings = Settings(redis_url=server.url, redis_timeout=3, helo_name="mailroom.test")
    app = make_celery(settings)
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        client = connection.default_channel.client  # type: ignore[attr-defined]
        options = client.connection_pool.connection_kwargs
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (3, 3)
        assert options["socket_keepalive"] is True
        with stopped(server):
            assert isinstance(outcome_of(client.ping), redis.TimeoutError)
        assert client.ping()
