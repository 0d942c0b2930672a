"""The settings that take one word from a fixed set (delivery mode, relay security, profile and
authentication, log level, submission TLS, MTA-STS), and how a word is read: trimmed, any case."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

_Enum = TypeVar("_Enum", bound=StrEnum)


class DeliveryMode(StrEnum):
    MX = "mx"  # straight to the recipient domain's mail exchangers
    RELAY = "relay"  # everything through MAILROOM_RELAY_HOST


class RelaySecurity(StrEnum):
    STARTTLS = "starttls"  # plain connect, then STARTTLS (port 587); required, never optional
    TLS = "tls"  # implicit TLS from the first byte (port 465)


class RelayProfile(StrEnum):
    NONE = "none"  # no built-in limits
    OFFICE365 = "office365"  # 3 connections, 30 messages a minute, 500 recipients a message
    GOOGLE = "google"  # smtp.gmail.com:587; 2,000 messages a day, 100 recipients a message


class RelayAuth(StrEnum):
    BASIC = "basic"  # AUTH PLAIN/LOGIN with RELAY_USERNAME and RELAY_PASSWORD
    XOAUTH2 = "xoauth2"  # AUTH XOAUTH2 with an OAuth 2.0 access token (Microsoft 365, Google)


class LogLevel(StrEnum):
    DEBUG = "debug"  # every library's chatter, for chasing a problem
    INFO = "info"  # one line per delivery attempt, plus start-up and shutdown
    WARNING = "warning"  # only what needs an operator's attention
    ERROR = "error"  # only failures


class SubmissionTls(StrEnum):
    STARTTLS = "starttls"  # clients upgrade with STARTTLS before AUTH
    TLS = "tls"  # implicit TLS listener


class MtaSts(StrEnum):
    ON = "on"  # RFC 8461: honour the recipient domain's published policy (direct MX delivery)
    OFF = "off"  # never look a policy up: opportunistic TLS to every MX host


WORDS: dict[str, type[StrEnum]] = {
    "delivery": DeliveryMode,
    "relay_security": RelaySecurity,
    "relay_profile": RelayProfile,
    "relay_auth": RelayAuth,
    "submission_tls": SubmissionTls,
    "log_level": LogLevel,
    "mta_sts": MtaSts,
}


def one_of(enum: type[_Enum], value: Any) -> _Enum:
    """`value` as a member of `enum`; ValueError listing the choices otherwise."""
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        try:
            return enum(value.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(member.value for member in enum)
    raise ValueError(f"must be one of {choices} (got {value!r})")
