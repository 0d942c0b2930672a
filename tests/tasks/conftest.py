"""Fixtures of the pipeline tests (tests/tasks/pipeline_support.py has the helpers)."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import pytest
import redis
from celery import Celery

from settings import Settings
from tasks.api import Mailroom
from tasks.worker_app import create_app
from tests.support.dns_server import DnsServer
from tests.support.redis_server import RedisServer
from tests.tasks.pipeline_support import make_settings


class Deployment(NamedTuple):
    """A test deployment: its settings, the worker's Celery app, and a producer bound to both."""

    settings: Settings
    app: Celery
    mailroom: Mailroom


class Deploy(Protocol):
    def __call__(self, **overrides: Any) -> Deployment: ...


@pytest.fixture
def deploy(
    redis_server: RedisServer, redis_client: redis.Redis, dns_server: DnsServer, mx_port: int
) -> Deploy:
    """Build a deployment on the test Redis (flushed), dnsmasq and this test's MX port."""

    def make(**overrides: Any) -> Deployment:
        settings = make_settings(redis_server.url, dns_server, mx_port, **overrides)
        app = create_app(settings)
        return Deployment(settings, app, Mailroom(settings, app=app))

    return make
