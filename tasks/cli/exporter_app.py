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
import time
from collections.abc import Iterable, Iterator, Mapping
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
from tasks.cli.exporter_events import consumers, event_metrics
from tasks.cli.queues import queue_depths
from tasks.cli.signals import stop_on_signals
from tasks.routing import INTAKE_QUEUE
from workers.observe.metrics import read_metrics
from workers.observe.queue_gauges import MOST_DEFERRED, held_destinations, oldest_deferred
from workers.queue.redis_client import redis_client

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def serve(settings: Settings) -> int:
    """Serve /metrics until SIGTERM or SIGINT; FAILED when the address cannot be bound."""
    listen = settings.metrics_listen
    registry = CollectorRegistry()
    registry.register(
        MailroomCollector(
            redis_client(settings.redis_url, settings.redis_timeout),
            settings.shards,
            consumers(settings),
        )
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

    def __init__(
        self, client: redis.Redis, shards: int, consumers: Mapping[str, str] | None = None
    ) -> None:
        self._client = client
        self._shards = shards
        self._consumers = dict(consumers or {})

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
        oldest = oldest_deferred(self._client, time.time())
        yield GaugeMetricFamily(
            "mailroom_oldest_deferred_seconds",
            "Seconds since the oldest deferred delivery was first queued (0: none)."
            + ("" if oldest.complete else f" Only the first {MOST_DEFERRED} entries were read."),
            value=round(oldest.seconds, 1),
        )
        held = GaugeMetricFamily(
            "mailroom_destination_held",
            "1 for each destination the cluster holds back now: its rate limit's next slot is "
            "still to come (rate), or a receiver's throttling reply slowed it down (slowdown).",
            labels=["destination", "reason"],
        )
        for destination, reason in sorted(held_destinations(self._client).items()):
            held.add_metric([destination, reason], 1)
        yield held
        yield CounterMetricFamily(
            "mailroom_messages_enqueued_total",
            "Messages producers put on the queues (notify, send, submission).",
            value=snapshot.enqueued,
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

        tokens = CounterMetricFamily(
            "mailroom_oauth_token_requests_total",
            "Requests to the relay's OAuth 2.0 token endpoint, by provider and outcome.",
            labels=["provider", "outcome"],
        )
        for (provider, outcome), n in sorted(snapshot.oauth_tokens.items()):
            tokens.add_metric([provider, outcome], n)
        yield tokens

        mta_sts = CounterMetricFamily(
            "mailroom_mta_sts_failures_total",
            "Direct MX deliveries that fell short of the recipient domain's MTA-STS policy, by"
            " the policy's mode (enforce: deferred; testing: delivered anyway).",
            labels=["mode"],
        )
        for mode, n in sorted(snapshot.mta_sts_failures.items()):
            mta_sts.add_metric([mode], n)
        yield mta_sts
        yield GaugeMetricFamily(
            "mailroom_suppressed_addresses",
            "Addresses on the suppression list (expired entries not yet pruned included).",
            value=depths["suppressed"],
        )
        yield GaugeMetricFamily(
            "mailroom_relay_held",
            "1 while relay deliveries are held for an authentication failure to fix, else 0.",
            value=int(snapshot.relay_held),
        )
        yield from event_metrics(self._client, self._consumers)
