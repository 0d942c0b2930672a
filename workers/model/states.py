"""Where one recipient of a message stands: the states status records, metrics and the
dead-letter queue share."""

from __future__ import annotations

from enum import StrEnum


class RecipientState(StrEnum):
    """Where one recipient of a message stands."""

    QUEUED = "queued"  # not tried yet (or replayed from the dead-letter queue)
    DEFERRED = "deferred"  # tried, failed transiently, due again later
    DELIVERED = "delivered"  # a server accepted it: final
    BOUNCED = "bounced"  # permanent failure: final, dead-lettered
    EXPIRED = "expired"  # still failing when MAX_AGE ran out: final, dead-lettered
    DELETED = "deleted"  # taken out of the queue by an operator (`mailroom queue delete`): final
    SUPPRESSED = "suppressed"  # on the suppression list: never sent, final, not dead-lettered
