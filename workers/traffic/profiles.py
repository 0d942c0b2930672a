"""Traffic profiles: the limits a well-known relay imposes, chosen with MAILROOM_RELAY_PROFILE.

Office 365 (Exchange Online) allows one mailbox 30 messages a minute, 3 concurrent connections
and 500 recipients a message; going over earns 4.7.x throttling replies, or a blocked account.
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
RELAY = "relay"


def traffic(settings: Settings) -> Traffic:
    """The limits `settings` ask for, with the relay profile folded in."""
    rates = dict(settings.rate_limits)
    connections = dict(settings.max_connections)
    max_recipients = None
    relayed = settings.delivery is DeliveryMode.RELAY or any(
        route.kind is HopKind.RELAY for route in settings.routes.values()
    )
    if relayed and settings.relay_profile is RelayProfile.OFFICE365:
        rates.setdefault(RELAY, OFFICE365_RATE)
        connections.setdefault(RELAY, OFFICE365_CONNECTIONS)
        max_recipients = OFFICE365_RECIPIENTS
    return Traffic(rates, connections, max_recipients)
