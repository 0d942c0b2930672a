"""The HTTP session token requests go through: public CAs (certifi) plus TLS_CA_FILE, as for
the relay, and a bounded timeout on every request.

Setting `verify=` on a requests session would not do: the environment's REQUESTS_CA_BUNDLE
overrides a session's own setting, and a bundle path replaces the public CAs instead of adding
to them. The trust is an `ssl.SSLContext` given to the connection pool instead.
"""

from __future__ import annotations

import ssl
from typing import Any

import certifi
import requests
from requests.adapters import HTTPAdapter


class _TrustingAdapter(HTTPAdapter):
    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


class BoundedSession(requests.Session):
    """A requests session trusting `ca_file` besides the public CAs, each request bounded by
    `timeout` seconds (connect and each read)."""

    def __init__(self, ca_file: str | None, timeout: float) -> None:
        super().__init__()
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certifi.where())
        if ca_file is not None:
            context.load_verify_locations(cafile=ca_file)
        self.mount("https://", _TrustingAdapter(context))
        self._timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = self._timeout
        return super().request(method, url, *args, **kwargs)
