"""Mailroom's configuration: one Settings model read from MAILROOM_* variables, `.env` and
secret files.

Entry points call `load_settings()` once and pass the result (or the parts of it a component
needs) down; nothing else reads the environment.
"""

from settings.errors import ENV_PREFIX, SettingsError, env_name
from settings.parsing import Listen, Nameserver, Rate
from settings.routes import FixedTls, HopKind, Route, route_for
from settings.settings import (
    FILE_FIELDS,
    SECRETS_DIR_VARIABLE,
    DeliveryMode,
    LogLevel,
    MtaSts,
    RelayAuth,
    RelayProfile,
    RelaySecurity,
    Settings,
    SubmissionTls,
    load_settings,
)

__all__ = [
    "ENV_PREFIX",
    "FILE_FIELDS",
    "SECRETS_DIR_VARIABLE",
    "DeliveryMode",
    "FixedTls",
    "HopKind",
    "Listen",
    "LogLevel",
    "MtaSts",
    "Nameserver",
    "Rate",
    "RelayAuth",
    "RelayProfile",
    "RelaySecurity",
    "Route",
    "Settings",
    "SettingsError",
    "SubmissionTls",
    "env_name",
    "load_settings",
    "route_for",
]
