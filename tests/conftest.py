"""Shared fixtures: each lives in its tests/support module and is imported here."""

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
