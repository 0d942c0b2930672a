"""MAILROOM_WEBHOOKS: the endpoints delivery events are POSTed to.

A JSON list of `{"url": "https://…", "secret": "whsec_…", "events": ["bounced", …]}`; `events`
is optional (absent or empty: every type). Only http(s) URLs with a host; the secret signs each
request (Standard Webhooks) and is never shown: a Webhook's repr and `label` leave it and the
URL's query out. Pure parsing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from settings.parsing import json_value, list_entry

EVENT_TYPES = (
    "queued",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "suppressed",
    "replayed",
    "deleted",
)
_FIELDS = frozenset({"url", "secret", "events"})
_MAX_URL = 2000
_MAX_SECRET = 1000


@dataclass(frozen=True, slots=True)
class Webhook:
    """One endpoint: where, the signing secret, and which event types it gets (empty: all)."""

    url: str
    secret: str = field(repr=False)
    events: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        """The URL without its query and fragment (they may hold a token): logs and metrics."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"

    @property
    def group(self) -> str:
        """The event log's consumer group for this endpoint: stable while its URL is."""
        return "webhook:" + hashlib.sha256(self.url.encode()).hexdigest()[:16]

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


def parse_webhooks(text: str) -> tuple[Webhook, ...]:
    """The endpoints of MAILROOM_WEBHOOKS; ValueError naming the first problem (never the
    secret)."""
    if not text.strip():
        return ()
    return webhooks_from_list(json_value(text, "a JSON list"))


def webhooks_from_list(value: Any) -> tuple[Webhook, ...]:
    """The endpoints of an already decoded list (settings given in code)."""
    if not isinstance(value, list | tuple):
        raise ValueError("must be a JSON list of objects with url and secret")
    hooks = tuple(_webhook(index, item) for index, item in enumerate(value))
    if len({hook.url for hook in hooks}) != len(hooks):
        raise ValueError("a url is given twice")
    return hooks


def _webhook(index: int, item: Any) -> Webhook:
    if isinstance(item, Webhook):
        return item
    where = list_entry(index, item, _FIELDS, "url and secret")
    url, secret, events = item.get("url"), item.get("secret"), item.get("events") or []
    if not isinstance(url, str) or len(url) > _MAX_URL:
        raise ValueError(f"{where} needs url as a string of at most {_MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{where}: url must be http:// or https:// with a host")
    if not url.isprintable() or " " in url:
        raise ValueError(f"{where}: url holds spaces or control characters")
    if not isinstance(secret, str) or not secret or len(secret) > _MAX_SECRET:
        raise ValueError(f"{where} needs secret as a non-empty string (value not shown)")
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise ValueError(f"{where}: events must be a list of event types")
    unknown_types = sorted(set(events) - set(EVENT_TYPES))
    if unknown_types:
        raise ValueError(f"{where}: unknown event type(s) {', '.join(unknown_types)}")
    return Webhook(url, secret, frozenset(events))
