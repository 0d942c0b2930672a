"""How `mailroom` commands reach Redis, and what they say when it is the wrong one or gone.

An operator's first questions when a command finds nothing are "which Redis did it ask?" and
"is that Redis Mailroom's at all?": `--verbose` answers the first (the URL, its password
replaced by `***`), and `not_found` the second, so a mistyped MAILROOM_REDIS_URL reads as such
rather than as "no message with id". Redis being unreachable is exit status 3
(`tasks.cli.main` turns redis-py's connection and timeout errors into one line).
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import redis

from settings import Settings
from settings.settings import redact_url
from workers.queue.redis_client import redis_client

# Every key Mailroom writes holds this: its own `mailroom:…` keys, the Celery queues
# `mailroom.shard.K` and `mailroom.intake`, and kombu's bindings `_kombu.binding.mailroom.…`
# (there as soon as a worker has started, before anything was sent).
_OURS = "*mailroom*"
_SCAN_PAGES = 20  # SCAN pages of 1000 keys looked at, at most, before assuming there is data
_SCAN_COUNT = 1000


def scrub(text: str, url: str) -> str:
    """`text` without the password of `url` (a library message may echo the URL back)."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def connect(settings: Settings) -> redis.Redis:
    """The command's client of MAILROOM_REDIS_URL, with its bounded waits."""
    return redis_client(settings.redis_url, settings.redis_timeout)


def say_which(settings: Settings) -> None:
    """One stderr line naming the Redis this command uses (password redacted)."""
    shown = redact_url(settings.redis_url)
    print(f"mailroom: using Redis {shown} (timeout {settings.redis_timeout:g} s)", file=sys.stderr)


def has_mailroom_data(client: redis.Redis) -> bool:
    """Whether this Redis holds any key Mailroom writes. Bounded: looks at a few SCAN pages
    only, and says True when it could not look at every key (a busy, shared Redis)."""
    cursor = 0
    for _ in range(_SCAN_PAGES):
        cursor, keys = client.scan(cursor, match=_OURS, count=_SCAN_COUNT)
        if keys:
            return True
        if cursor == 0:
            return False
    return True


def not_found(client: redis.Redis, settings: Settings, what: str) -> str:
    """The line to print when a look-up found nothing: `what`, unless this Redis holds no
    Mailroom data at all, which is more likely the answer."""
    if has_mailroom_data(client):
        return what
    shown = redact_url(settings.redis_url)
    return f"no Mailroom data in {shown}: is MAILROOM_REDIS_URL right?"
