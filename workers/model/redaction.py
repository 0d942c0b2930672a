"""Personal data out of what operators see: addresses in server replies keep only their domain.

Receivers quote the recipient in their replies (`<bob@example.org>: Recipient address
rejected`). Logs, Flower's task results and the status record's reply texts carry ids and
destinations, not people: each quoted address becomes `*@example.org`. The recipient's own
status entry keeps its address in its "address" field.
"""

from __future__ import annotations

import re

# A local part and a domain of anything that is not a delimiter replies put around addresses.
_ADDRESS = re.compile(r"[^\s<>()\[\]@;,'\"]+@([^\s<>()\[\]@;,'\"]+)")


def redact_addresses(text: str) -> str:
    """`text` with every address in it replaced by `*@` and its domain."""
    return _ADDRESS.sub(r"*@\1", text)
