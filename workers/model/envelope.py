"""The engine's view of one message: envelope sender, the RFC 5322 bytes, and what they need.

Built once at intake (`tasks.message.build_message`) and stored by the claim check; the SMTP
session reads `smtputf8` and `eight_bit` to choose the MAIL FROM parameters (RFC 6531 SMTPUTF8,
RFC 6152 BODY=8BITMIME). No pydantic and no Celery here: the engine takes this value as it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message ready for DATA; recipients travel apart from it, per destination."""

    message_id: str  # Mailroom's id, also the local part of the Message-ID header
    sender: str  # envelope sender (MAIL FROM); A-label domain unless its local part is non-ASCII
    data: bytes  # the full RFC 5322 message with CRLF line endings, before dot-stuffing
    smtputf8: bool  # an envelope address has a non-ASCII local part (RFC 6531)
    eight_bit: bool  # `data` holds bytes above 127, so DATA needs BODY=8BITMIME (RFC 6152)

    @property
    def size(self) -> int:
        """The message's size in octets, as the SIZE extension (RFC 1870) counts it."""
        return len(self.data)


def outbound(message_id: str, sender: str, data: bytes, *, smtputf8: bool) -> OutboundMessage:
    """Return an `OutboundMessage`, working out from `data` whether it needs 8BITMIME."""
    return OutboundMessage(
        message_id=message_id,
        sender=sender,
        data=data,
        smtputf8=smtputf8,
        eight_bit=not data.isascii(),
    )
