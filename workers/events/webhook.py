"""POSTing a batch of events to one webhook endpoint, signed the Standard Webhooks way.

Body: `{"events": [...]}` (docs/contract.md §4 shapes). Headers: `webhook-id` (the same for the
same batch on every try: a hash of its event ids), `webhook-timestamp` (UNIX seconds),
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`; the key is the secret
after `whsec_` base64-decoded, or the secret's UTF-8 bytes. TLS is verified against the public
CAs plus TLS_CA_FILE, redirects are not followed, every request is bounded by a timeout, and the
endpoint's answer is never read beyond its status line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import certifi
import httpx

from settings.webhooks import Webhook


@dataclass(frozen=True, slots=True)
class Sent:
    """What handing a batch over came to: `ok`, and a short status for logs and metrics."""

    ok: bool
    status: str


Send = Callable[[Sequence[dict[str, Any]]], Sent]


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            pass
    return secret.encode()


def signature(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The `webhook-signature` header value."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def batch_id(events: Sequence[dict[str, Any]]) -> str:
    """A batch's `webhook-id`: the same events, the same id."""
    ids = "|".join(str(event["event_id"]) for event in events)
    return "msg_" + hashlib.sha256(ids.encode()).hexdigest()[:32]


class WebhookSender:
    """Sends batches to one endpoint over one kept-alive HTTP client."""

    def __init__(
        self, hook: Webhook, *, ca_file: str | None, timeout: float, clock: Callable[[], float]
    ) -> None:
        context = ssl.create_default_context(cafile=certifi.where())
        if ca_file is not None:
            context.load_verify_locations(cafile=ca_file)
        self._hook = hook
        self._clock = clock
        self._client = httpx.Client(verify=context, timeout=timeout, follow_redirects=False)

    def __call__(self, events: Sequence[dict[str, Any]]) -> Sent:
        body = json.dumps({"events": list(events)}, separators=(",", ":")).encode()
        webhook_id = batch_id(events)
        timestamp = str(int(self._clock()))
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": signature(self._hook.secret, webhook_id, timestamp, body),
        }
        try:
            with self._client.stream("POST", self._hook.url, content=body, headers=headers) as r:
                status = r.status_code
        except httpx.HTTPError as exc:
            return Sent(ok=False, status=type(exc).__name__)
        return Sent(ok=200 <= status < 300, status=str(status))

    def close(self) -> None:
        self._client.close()
