"""Shared fixtures: each lives in its tests/support module and is imported here."""

import os
from collections.abc import Iterator

import pytest

from tests.support.dns_server import dns_blackhole, dns_server, make_dns_server  # noqa: F401
from tests.support.oauth_relay import oauth  # noqa: F401
from tests.support.ports import mx_port  # noqa: F401
from tests.support.raw_servers import (  # noqa: F401
    make_greeting_server,
    make_refused_port,
    make_silent_server,
)
from tests.support.redis_server import make_redis_server, redis_client, redis_server  # noqa: F401
from tests.support.smtp_sink import make_sink  # noqa: F401
from tests.support.tls_material import tls  # noqa: F401


@pytest.fixture(autouse=True, scope="session")
def _no_settings_from_outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No developer's MAILROOM_* variable, and no `.env` (scripts/run writes one at the
    repository root, and Settings reads `.env` from the working directory), reaches a test:
    each sets what it needs. Tests name files by their path from REPO, never from the cwd."""
    patch = pytest.MonkeyPatch()
    for name in list(os.environ):
        if name.upper().startswith("MAILROOM_"):
            patch.delenv(name)
    patch.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    patch.undo()
