"""How long Mailroom keeps what it stores: content, status records and dead letters.

Content and status records EXPIRE in Redis (status records from their last write, content from
when it was stored, or replayed); they must outlive MAX_AGE, or a deferred delivery would lose
them before it expires. Dead letters live `dead_letters` seconds from when they died: every
write sets the queue's EXPIRE and the workers' sweeper prunes older entries, and a dead letter
keeps its message's content and status record at least that long, so a replay finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from settings import Settings
from workers.queue.content import record_ttl


@dataclass(frozen=True, slots=True)
class Retention:
    """Seconds each kind of record is kept."""

    content: int
    status: int
    dead_letters: int


def retention(settings: Settings) -> Retention:
    """The retention `settings` ask for: CONTENT_TTL, STATUS_TTL, DEAD_LETTER_TTL."""
    default = record_ttl(settings.max_age)
    return Retention(
        content=settings.content_ttl or default,
        status=settings.status_ttl or default,
        dead_letters=settings.dead_letter_ttl,
    )
