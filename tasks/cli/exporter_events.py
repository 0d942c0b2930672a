"""The exporter's delivery event metrics: events written, each consumer's batches by outcome,
and each consumer's lag (`workers.observe.event_gauges`)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from settings import Settings
from tasks.event_dispatch import task_group
from workers.observe.event_gauges import deliveries, events_written, lags


def consumers(settings: Settings) -> dict[str, str]:
    """Consumer group → the label its metrics carry (a webhook's URL without its query)."""
    found = {hook.group: hook.label for hook in settings.webhooks}
    if settings.events_task is not None:
        group = task_group(settings.events_task)
        found[group] = group
    return found


def event_metrics(client: redis.Redis, groups: Mapping[str, str]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "mailroom_events_written_total",
        "Delivery events appended to the event log.",
        value=events_written(client),
    )
    batches = CounterMetricFamily(
        "mailroom_event_deliveries_total",
        "Batches of events handed to a consumer (webhook, events task), by outcome.",
        labels=["consumer", "status"],
    )
    for (label, status), n in sorted(deliveries(client).items()):
        batches.add_metric([label, status], n)
    yield batches
    lag = GaugeMetricFamily(
        "mailroom_event_lag_seconds",
        "Age of the oldest event a consumer has not acknowledged (0: none).",
        labels=["consumer"],
    )
    for group, seconds in sorted(lags(client, groups, time.time()).items()):
        lag.add_metric([groups[group]], round(seconds, 1))
    yield lag
