"""The server of `mailroom exporter` (tasks.cli.exporter): Prometheus metrics at /metrics.

Nothing is kept in this process: every scrape reads Redis, where every worker counts its
deliveries (`workers.observe.metrics`), and measures the queues as `mailroom queues` does. So one
exporter serves the whole cluster, and it may be restarted or run twice without losing a count.
A scrape while Redis is down answers 503 (one line on stderr, no traceback), which Prometheus
records as `up == 0`. It binds only the configured address, and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from settings import Listen, Settings
from tasks.cli.errors import FAILED, OK
from tasks.cli.queues import queue_depths
from tasks.cli.signals import stop_on_signals
from tasks.routing import INTAKE_QUEUE
from workers.observe.metrics import read_metrics
from workers.queue.redis_client import redis_client

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def serve(settings: Settings) -> int:
    """Serve /metrics until SIGTERM or SIGINT; FAILED when the address cannot be bound."""
    listen = settings.metrics_listen
    registry = CollectorRegistry()
    registry.register(
        MailroomCollector(redis_client(settings.redis_url, settings.redis_timeout), settings.shards)
    )
    stop = stop_on_signals()
    try:
        server = _server(listen, _unless_redis_fails(make_wsgi_app(registry)))
    except OSError as exc:  # the port is taken, or the host is no address of this machine
        print(f"mailroom: exporter cannot listen on {listen}: {exc}", file=sys.stderr)
        return FAILED
    threading.Thread(target=server.serve_forever, name="exporter", daemon=True).start()
    print(f"mailroom exporter: metrics at http://{listen}/metrics", file=sys.stderr, flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    return OK


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper never holds up the shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape, every 15 s, would bury what matters


def _server(listen: Listen, app: WSGIApplication) -> WSGIServer:
    """A threading WSGI server bound to `listen` only (IPv4 or IPv6, as its address is)."""
    family, _, _, _, address = socket.getaddrinfo(
        listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server_class = type("_Server", (_ThreadingServer,), {"address_family": family})
    return make_server(str(address[0]), listen.port, app, server_class, _QuietHandler)


def _unless_redis_fails(app: WSGIApplication) -> WSGIApplication:
    """`app`, answering 503 and one line on stderr (no traceback) when Redis fails a scrape."""

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except redis.RedisError as exc:
            print(f"mailroom exporter: scrape failed: {exc}", file=sys.stderr, flush=True)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"Redis failed: {exc}\n".encode()]

    return guarded


class MailroomCollector:
    """Reads the cluster's queues and counters from Redis on every scrape."""

    def __init__(self, client: redis.Redis, shards: int) -> None:
        self._client = client
        self._shards = shards

    def collect(self) -> Iterator[Metric]:
        """Every Mailroom metric, as docs/contract.md names them."""
        depths = queue_depths(self._client, self._shards)
        snapshot = read_metrics(self._client)

        queues = GaugeMetricFamily(
            "mailroom_queue_depth", "Tasks waiting in a Celery queue.", labels=["queue"]
        )
        for name, depth in {**depths["shards"], INTAKE_QUEUE: depths["intake"]}.items():
            queues.add_metric([name], depth)
        yield queues
        yield GaugeMetricFamily(
            "mailroom_deferred", "Deliveries waiting for a retry.", value=depths["deferred"]
        )
        yield GaugeMetricFamily(
            "mailroom_dead_letters", "Messages in the dead-letter queue.", value=depths["dead"]
        )

        deliveries = CounterMetricFamily(
            "mailroom_deliveries_total",
            "Recipients by the outcome of a delivery attempt.",
            labels=["outcome", "destination"],
        )
        for (outcome, destination), n in sorted(snapshot.deliveries.items()):
            deliveries.add_metric([outcome, destination], n)
        yield deliveries

        replies = CounterMetricFamily(
            "mailroom_smtp_replies_total",
            "SMTP replies (and Mailroom's synthetic ones) by class and step.",
            labels=["class", "step"],
        )
        for (reply_class, step), n in sorted(snapshot.replies.items()):
            replies.add_metric([reply_class, step], n)
        yield replies

        session = snapshot.session
        yield HistogramMetricFamily(
            "mailroom_session_seconds",
            "Duration of one SMTP session with one server address.",
            buckets=session.cumulative(),
            sum_value=session.sum,
        )

        throttled = CounterMetricFamily(
            "mailroom_throttled_total",
            "Deliveries the cluster's rate limit or connection cap deferred.",
            labels=["destination"],
        )
        for destination, n in sorted(snapshot.throttled.items()):
            throttled.add_metric([destination], n)
        yield throttled
