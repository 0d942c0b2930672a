"""Settings: the MAILROOM_* table of docs/contract.md as one flat, frozen, validated model.

Values come from keyword arguments, then the environment, then `MAILROOM_<NAME>_FILE` variables
of the secret settings (the named file's content), then `.env` in the working directory, then the
secrets directory (MAILROOM_SECRETS_DIR, else `/run/secrets` when it exists: one file per
variable, named as the variable in lower case, as Docker and Compose mount secrets).
Variables that are not fields (other tools' MAILROOM_* or anything else in `.env`) are ignored;
unknown keyword arguments are refused. `load_settings()` is the start-up entry point: it turns
the first validation problem into a SettingsError (settings/errors.py): one line naming the
variable. Secrets stay SecretStr; callers unwrap them with `.get_secret_value()` at the last moment.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from settings import parsing
from settings.choices import (
    WORDS,
    DeliveryMode,
    LogLevel,
    MtaSts,
    RelayAuth,
    RelayProfile,
    RelaySecurity,
    SubmissionTls,
    one_of,
)
from settings.consistency import check_consistent
from settings.dkim import DkimKey, dkim_keys_from_list, parse_dkim_keys
from settings.errors import ENV_PREFIX, one_line
from settings.parsing import Listen, Nameserver, Rate
from settings.routes import Route, parse_routes, routes_from_mapping
from settings.sources import (
    FILE_FIELDS,
    SECRET_FIELDS,
    SECRETS_DIR_VARIABLE,
    later_sources,
)
from settings.webhooks import Webhook, parse_webhooks, webhooks_from_list

__all__ = [
    "FILE_FIELDS",
    "SECRETS_DIR_VARIABLE",
    "DeliveryMode",
    "LogLevel",
    "MtaSts",
    "RelayAuth",
    "RelayProfile",
    "RelaySecurity",
    "Settings",
    "SubmissionTls",
    "load_settings",
]

# Microsoft's authority; {tenant} is OAUTH_TENANT. Tests point it at a local HTTPS server.
DEFAULT_AUTHORITY = "https://login.microsoftonline.com/{tenant}"
MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
GOOGLE_HOST = "smtp.gmail.com"
_DEFAULT_RETRY_DELAYS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800)
_Port = Annotated[int, Field(ge=1, le=65535)]
_Positive = Annotated[int, Field(gt=0)]
_Timeout = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Settings(BaseSettings):
    """Every MAILROOM_* variable; build once at an entry point and pass the parts down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
    )

    # Broker, store and sharding.
    redis_url: str = "redis://127.0.0.1:6379/0"
    shards: int = Field(default=8, ge=1)
    visibility_timeout: _Positive = 900
    # Seconds one Redis connect or reply may take (every client, broker connections included).
    redis_timeout: _Timeout = 10
    # Where mail goes.
    delivery: DeliveryMode = DeliveryMode.MX
    # Per recipient domain: mx, relay or a fixed smtp:// server (settings/routes.py).
    routes: Annotated[dict[str, Route], NoDecode] = Field(default_factory=dict)
    relay_host: str | None = None
    relay_port: _Port = 587
    relay_security: RelaySecurity = RelaySecurity.STARTTLS
    relay_username: str | None = None
    relay_password: SecretStr | None = None
    relay_profile: RelayProfile = RelayProfile.NONE
    # None: xoauth2 when the profile's OAuth credentials are set, else basic (`relay_auth_mode`).
    relay_auth: RelayAuth | None = None
    # OAuth 2.0 for AUTH XOAUTH2: Microsoft 365 client credentials, or a Google service account.
    oauth_tenant: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    # Microsoft: a certificate credential instead of the secret (PEM: private key and cert).
    oauth_client_certificate_file: Path | None = None
    oauth_scope: str | None = None  # None: the provider's (`oauth_scope_in_force`)
    oauth_authority: str = DEFAULT_AUTHORITY
    oauth_service_account_file: Path | None = None
    # Seconds between two tries of a relay held for its authentication (one worker tries).
    relay_probe_interval: _Timeout = 60
    mx_port: _Port = 25
    dns_nameservers: Annotated[tuple[Nameserver, ...], NoDecode] = ()
    # MX hosts whose addresses fall in these networks are never dialled (mx mode only).
    mx_deny_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    tls_ca_file: Path | None = None
    # RFC 8461 policies of recipient domains, for direct MX delivery only.
    mta_sts: MtaSts = MtaSts.ON
    helo_name: str = Field(default_factory=socket.getfqdn)
    # DKIM: the keys messages are signed with, by From domain (settings/dkim.py).
    dkim_keys: Annotated[tuple[DkimKey, ...], NoDecode] = ()
    # Pace, retries and limits.
    rate_limits: Annotated[dict[str, Rate], NoDecode] = Field(default_factory=dict)
    max_connections: Annotated[dict[str, int], NoDecode] = Field(default_factory=lambda: {"*": 20})
    retry_delays: Annotated[tuple[int, ...], NoDecode] = _DEFAULT_RETRY_DELAYS
    max_age: _Positive = 432000
    max_message_bytes: _Positive = 26214400
    idempotency_ttl: _Positive = 86400
    # Retention in seconds: content and status records from their last write (None: MAX_AGE
    # plus a day), dead letters from when they died (the workers' sweeper prunes them).
    content_ttl: _Positive | None = None
    status_ttl: _Positive | None = None
    dead_letter_ttl: _Positive = 604800
    # Entries the delivery event log keeps, about (0: no events are written).
    events_maxlen: Annotated[int, Field(ge=0)] = 100_000
    # Where events go besides the log: webhooks, and a Celery task of the producer's own app.
    webhooks: Annotated[tuple[Webhook, ...], NoDecode] = ()
    events_task: str | None = None
    events_queue: str = "mailroom.events"
    # Seconds a failing webhook batch is retried before it goes to its dead-letter list, and
    # after which a batch a dead worker held is taken over by another.
    webhook_retry_for: _Timeout = 86400
    events_claim_timeout: _Timeout = 300
    # Days a suppression list entry lives (None: for ever).
    suppression_ttl: _Positive | None = None
    # Timeouts in seconds (RFC 5321 §4.5.3.2 gives the upper bounds per command).
    connect_timeout: _Timeout = 30
    command_timeout: _Timeout = 300
    data_timeout: _Timeout = 600
    session_timeout: _Timeout = 600
    dns_timeout: _Timeout = 10
    # SMTP connection reuse (Postfix's connection cache): consecutive deliveries to one server
    # share a session, with RSET between messages.
    connection_reuse: bool = True
    connection_max_messages: _Positive = 100
    connection_idle_timeout: _Timeout = 5
    log_level: LogLevel = LogLevel.INFO
    # Operator-facing listeners.
    flower_listen: Annotated[Listen, NoDecode] = Listen("127.0.0.1", 5555)
    flower_basic_auth: SecretStr | None = None
    metrics_listen: Annotated[Listen, NoDecode] = Listen("127.0.0.1", 9808)
    submission_listen: Annotated[Listen, NoDecode] = Listen("127.0.0.1", 587)
    submission_tls: SubmissionTls = SubmissionTls.STARTTLS
    submission_cert_file: Path | None = None
    submission_key_file: Path | None = None
    submission_accounts: Path | None = None
    # RFC 5321 §4.5.3.1.8 asks servers to take at least 100 recipients per message.
    submission_max_recipients: _Positive = 100
    # Open connections a listener serves at once, in all and per client address (IPv6: a /64).
    submission_max_connections: _Positive = 100
    submission_max_connections_per_client: _Positive = 20

    def __init__(self, **values: Any) -> None:
        # Explicit so type checkers accept raw strings ("30/m", "127.0.0.1:5353") as well as
        # parsed values: the field types describe the result, validators take either.
        super().__init__(**values)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        later = later_sources(settings_cls, dotenv_settings, file_secret_settings)
        return init_settings, env_settings, *later

    @field_validator(*WORDS, mode="before")
    @classmethod
    def _known_word(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name == "relay_auth":
            return None  # unset: `relay_auth_mode` decides
        return one_of(WORDS[str(info.field_name)], value)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        # Only the scheme is echoed: the URL may carry the Redis password.
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL (got scheme {scheme!r})"
            )
        return value

    @field_validator("relay_host")
    @classmethod
    def _relay_host(cls, value: str | None) -> str | None:
        return None if value is None else parsing.parse_relay_host(value)

    @field_validator("helo_name")
    @classmethod
    def _helo_name(cls, value: str) -> str:
        name = value.strip()
        literal = name.startswith("[") and name.endswith("]") and parsing.is_ip(name[1:-1])
        if not literal and not parsing.is_dns_name(name):
            raise ValueError(
                f"must be a DNS name or an address literal like [192.0.2.1] (got {value!r})"
            )
        return name

    @field_validator("oauth_authority")
    @classmethod
    def _authority(cls, value: str) -> str:
        parts = urlsplit(value.replace("{tenant}", "tenant"))
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"must be an https:// URL (got {value!r})")
        return value.rstrip("/")

    @field_validator("tls_ca_file", "oauth_service_account_file", "oauth_client_certificate_file")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file (got '{value}')")
        return value

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _nameservers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parsing.parse_nameservers(value)
        if isinstance(value, list | tuple):
            return tuple(parsing.parse_nameserver(v) if isinstance(v, str) else v for v in value)
        return value

    @field_validator("mx_deny_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parsing.parse_networks(value)
        if isinstance(value, list | tuple):
            return parsing.parse_networks(",".join(map(str, value)))
        return value

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _rate_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parsing.parse_rate_limits(value)
        return parsing.rate_limits_from_mapping(value) if isinstance(value, dict) else value

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_routes(value)
        return routes_from_mapping(value) if isinstance(value, dict) else value

    @field_validator("webhooks", mode="before")
    @classmethod
    def _webhooks(cls, value: Any) -> Any:
        return parse_webhooks(value) if isinstance(value, str) else webhooks_from_list(value)

    @field_validator("events_task", "events_queue")
    @classmethod
    def _task_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", value):
            raise ValueError(f"must be a Celery task or queue name (got {value[:80]!r})")
        return value

    @field_validator("suppression_ttl", mode="before")
    @classmethod
    def _suppression_ttl(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"", "permanent"}:
            return None
        return value

    @field_validator("dkim_keys", mode="before")
    @classmethod
    def _dkim_keys(cls, value: Any) -> Any:
        return parse_dkim_keys(value) if isinstance(value, str) else dkim_keys_from_list(value)

    @field_validator("max_connections", mode="before")
    @classmethod
    def _max_connections(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parsing.parse_max_connections(value)
        return parsing.max_connections_from_mapping(value) if isinstance(value, dict) else value

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _retry_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parsing.parse_retry_delays(value)
        if isinstance(value, list | tuple):
            return parsing.parse_retry_delays(",".join(str(v) for v in value))
        return value

    @field_validator("flower_listen", "metrics_listen", "submission_listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        return parsing.parse_listen(value) if isinstance(value, str) else value

    @field_validator("flower_basic_auth")
    @classmethod
    def _basic_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, sep, password = value.get_secret_value().partition(":")
            if not (user and sep and password):
                raise ValueError("must be user:password (value not shown)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _profile_host(cls, data: Any) -> Any:
        """RELAY_PROFILE=google names its relay: smtp.gmail.com (port and STARTTLS are the
        defaults already) unless RELAY_HOST says otherwise."""
        if isinstance(data, dict) and not data.get("relay_host"):
            profile = data.get("relay_profile")
            if isinstance(profile, str) and profile.strip().lower() == RelayProfile.GOOGLE:
                return {**data, "relay_host": GOOGLE_HOST}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        check_consistent(self)
        return self

    @property
    def relay_auth_mode(self) -> RelayAuth:
        """RELAY_AUTH, else xoauth2 when the relay profile's OAuth credentials are set."""
        if self.relay_auth is not None:
            return self.relay_auth
        profile = self.relay_profile
        if (profile is RelayProfile.OFFICE365 and self.oauth_client_id) or (
            profile is RelayProfile.GOOGLE and self.oauth_service_account_file is not None
        ):
            return RelayAuth.XOAUTH2
        return RelayAuth.BASIC

    @property
    def oauth_google(self) -> bool:
        """Whether XOAUTH2 tokens come from a Google service account (else from Microsoft)."""
        return (
            self.oauth_service_account_file is not None or self.relay_profile is RelayProfile.GOOGLE
        )

    @property
    def oauth_scope_in_force(self) -> str:
        """OAUTH_SCOPE, else the provider's: Exchange Online's or Gmail's."""
        if self.oauth_scope:
            return self.oauth_scope
        return GOOGLE_SCOPE if self.oauth_google else MICROSOFT_SCOPE

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            secret_url = name == "redis_url" and isinstance(value, str)
            yield name, redact_url(value) if secret_url else value


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from keyword overrides, the environment and `.env`.

    :raises SettingsError: the first bad value, as one line naming its variable.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise one_line(exc.errors()[0], SECRET_FIELDS) from None


def redact_url(url: str) -> str:
    """`url` with its password, if any, replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
