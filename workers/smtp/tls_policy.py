"""Which TLS a destination gets, and the one place every client `SSLContext` is built.

Relays (the customer's server, Office 365) always get TLS, verified against the public CAs
(certifi) plus the operator's extra bundle, with the relay's DNS name checked; credentials are
only ever sent inside it. Direct-to-MX delivery uses TLS when the server offers STARTTLS and
does not verify it (Postfix's `smtp_tls_security_level = may`, RFC 7435 opportunistic
security): MX certificates are rarely valid for the MX name, and refusing them would only
push the mail to plaintext anyway.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from enum import StrEnum

import certifi


class TlsMode(StrEnum):
    """How a session secures itself."""

    OPPORTUNISTIC = "may"  # STARTTLS when offered, unverified; plaintext when the handshake fails
    STARTTLS = "starttls"  # STARTTLS required and verified (relay on 587)
    IMPLICIT = "tls"  # TLS from the first byte, verified (relay on 465, RFC 8314)
    # STARTTLS when offered, verified; a handshake or certificate failure is retried unverified
    # (MTA-STS `testing`, RFC 8461 §5: the failure is noticed, the mail still goes).
    VERIFIED_MAY = "verify-may"


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """A mode and the context that implements it; build once per process, share freely.

    Two policies built from the same mode and CA bundle are equal (the context is left out of
    the comparison): connections parked under one may be reused under the other.
    """

    mode: TlsMode
    context: ssl.SSLContext = field(compare=False)
    ca_file: str | None = None  # the operator's extra CA bundle, beside the public CAs
    # What requires this TLS besides the settings (an MTA-STS policy), named in the replies.
    required_by: str = field(default="", compare=False)

    @property
    def identity(self) -> str:
        """A stable name for what this policy checks, the same for every equal policy."""
        trusted = "none" if self.mode is TlsMode.OPPORTUNISTIC else self.ca_file or "public"
        return f"{self.mode.value}:{trusted}"

    @property
    def required(self) -> bool:
        """Whether a session without TLS must send nothing at all."""
        return self.mode not in (TlsMode.OPPORTUNISTIC, TlsMode.VERIFIED_MAY)


def relay_policy(security: str, ca_file: str | None) -> TlsPolicy:
    """Verified TLS for a relay: `security` is "starttls" or "tls" (implicit).

    :raises ValueError: an unknown `security` value.
    :raises OSError: `ca_file` cannot be read (settings validation checks it exists first).
    """
    mode = TlsMode(security)
    if mode is TlsMode.OPPORTUNISTIC:
        raise ValueError("a relay always requires verified TLS")
    return TlsPolicy(mode, verified_context(ca_file), ca_file or None)


def verified_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context trusting the public CAs plus `ca_file`, checking the host name; for
    relays, MTA-STS MX hosts and MTA-STS policy hosts.

    :raises OSError: `ca_file` cannot be read.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certifi.where())
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    # RFC 8996 deprecates TLS 1.0 and 1.1; RFC 8314 asks submission clients for 1.2 or later.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def opportunistic_policy() -> TlsPolicy:
    """Unverified STARTTLS for MX hosts: encryption against passive eavesdroppers only."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return TlsPolicy(TlsMode.OPPORTUNISTIC, context)
