"""Traffic profiles: the limits a well-known relay imposes, chosen with MAILROOM_RELAY_PROFILE.

Office 365 (Exchange Online) allows one mailbox 30 messages a minute, 3 concurrent connections
and 500 recipients a message; going over earns 4.7.x throttling replies, or a blocked account.
Google Workspace's smtp.gmail.com allows one user 2,000 messages a day and 100 recipients a
message (its per-day limits are over a rolling 24 hours; Mailroom spaces messages evenly).
The profile's values apply to the `relay` destination unless RATE_LIMITS or MAX_CONNECTIONS name
`relay` themselves (the operator's own value wins).
"""

from __future__ import annotations

from dataclasses import dataclass

from settings import DeliveryMode, HopKind, Rate, RelayProfile, Settings


@dataclass(frozen=True, slots=True)
class Traffic:
    """The limits in force: per-destination rates and connection caps, recipients per message."""

    rates: dict[str, Rate]
    connections: dict[str, int]
    max_recipients: int | None  # None: no limit of Mailroom's own


OFFICE365_RATE = Rate(30, 60)
OFFICE365_CONNECTIONS = 3
OFFICE365_RECIPIENTS = 500
# Google Workspace (https://support.google.com/a/answer/166852): 2,000 messages a day per user
# and 100 recipients a message sent through smtp.gmail.com; no connection limit is documented.
GOOGLE_RATE = Rate(2000, 86400)
GOOGLE_RECIPIENTS = 100
RELAY = "relay"


def traffic(settings: Settings) -> Traffic:
    """The limits `settings` ask for, with the relay profile folded in."""
    rates = dict(settings.rate_limits)
    connections = dict(settings.max_connections)
    max_recipients = None
    relay = settings.delivery is DeliveryMode.RELAY or any(
        route.kind is HopKind.RELAY for route in settings.routes.values()
    )
    if relay and settings.relay_profile is RelayProfile.OFFICE365:
        rates.setdefault(RELAY, OFFICE365_RATE)
        connections.setdefault(RELAY, OFFICE365_CONNECTIONS)
        max_recipients = OFFICE365_RECIPIENTS
    if relay and settings.relay_profile is RelayProfile.GOOGLE:
        rates.setdefault(RELAY, GOOGLE_RATE)
        max_recipients = GOOGLE_RECIPIENTS
    return Traffic(rates, connections, max_recipients)
