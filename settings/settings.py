"""Settings: the MAILROOM_* table of DESIGN.md as one flat, frozen, validated model.

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

import os
import socket
from collections.abc import Iterator, Mapping
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from settings import parsing
from settings.errors import ENV_PREFIX, SettingsError, env_name, one_line
from settings.parsing import Listen, Nameserver, Rate

_SECRET_FIELDS = frozenset({"relay_password", "flower_basic_auth"})
# Settings that may hold a secret, each also readable from the file MAILROOM_<NAME>_FILE names.
FILE_FIELDS = frozenset({*_SECRET_FIELDS, "redis_url"})
SECRETS_DIR_VARIABLE = f"{ENV_PREFIX}SECRETS_DIR"
DEFAULT_SECRETS_DIR = Path("/run/secrets")  # where Docker and Compose mount secrets
_MAX_SECRET_BYTES = 65536  # a secret file larger than this is the wrong file
_DEFAULT_RETRY_DELAYS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800)
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


class LogLevel(StrEnum):
    DEBUG = "debug"  # every library's chatter, for chasing a problem
    INFO = "info"  # one line per delivery attempt, plus start-up and shutdown
    WARNING = "warning"  # only what needs an operator's attention
    ERROR = "error"  # only failures


class SubmissionTls(StrEnum):
    STARTTLS = "starttls"  # clients upgrade with STARTTLS before AUTH
    TLS = "tls"  # implicit TLS listener


_WORDS: dict[str, type[StrEnum]] = {
    "delivery": DeliveryMode,
    "relay_security": RelaySecurity,
    "relay_profile": RelayProfile,
    "submission_tls": SubmissionTls,
    "log_level": LogLevel,
}
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
    relay_host: str | None = None
    relay_port: _Port = 587
    relay_security: RelaySecurity = RelaySecurity.STARTTLS
    relay_username: str | None = None
    relay_password: SecretStr | None = None
    relay_profile: RelayProfile = RelayProfile.NONE
    mx_port: _Port = 25
    dns_nameservers: Annotated[tuple[Nameserver, ...], NoDecode] = ()
    # MX hosts whose addresses fall in these networks are never dialled (mx mode only).
    mx_deny_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    tls_ca_file: Path | None = None
    helo_name: str = Field(default_factory=socket.getfqdn)
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
        # With extra="forbid" the dotenv source hands every unknown line on as an extra field.
        dotenv = _FieldsOnly(settings_cls, dotenv_settings)
        files = _SecretFiles(settings_cls, os.environ)
        secrets_dir = _secrets_dir(os.environ)
        if secrets_dir is not None:
            # pydantic-settings warns about a directory that does not exist: only an existing
            # one is ever handed over (_secrets_dir refuses a named one that is missing).
            file_secret_settings = SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir)
        return init_settings, env_settings, files, dotenv, file_secret_settings

    @field_validator(*_WORDS, mode="before")
    @classmethod
    def _known_word(cls, value: Any, info: ValidationInfo) -> Any:
        return _one_of(_WORDS[str(info.field_name)], value)

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

    @field_validator("tls_ca_file")
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

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.delivery is DeliveryMode.RELAY and self.relay_host is None:
            raise SettingsError(env_name("relay_host"), "required when MAILROOM_DELIVERY=relay")
        if self.relay_username is not None and self.relay_password is None:
            raise SettingsError(
                env_name("relay_password"), "required when MAILROOM_RELAY_USERNAME is set"
            )
        if self.relay_password is not None and self.relay_username is None:
            raise SettingsError(
                env_name("relay_username"), "required when MAILROOM_RELAY_PASSWORD is set"
            )
        if self.session_timeout >= self.visibility_timeout:
            raise SettingsError(
                env_name("session_timeout"),
                f"must be less than MAILROOM_VISIBILITY_TIMEOUT ({self.visibility_timeout})"
                f" (got {self.session_timeout:g})",
            )
        for name in ("content_ttl", "status_ttl"):
            kept = getattr(self, name)
            # A deferred delivery needs both until MAX_AGE expires it.
            if kept is not None and kept <= self.max_age:
                raise SettingsError(
                    env_name(name),
                    f"must be more than MAILROOM_MAX_AGE ({self.max_age}) (got {kept})",
                )
        if not self.flower_listen.is_loopback and self.flower_basic_auth is None:
            raise SettingsError(
                env_name("flower_basic_auth"),
                "required when MAILROOM_FLOWER_LISTEN is not a loopback address"
                f" (got '{self.flower_listen}')",
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, _redact_url(value) if name == "redis_url" else value


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from keyword overrides, the environment and `.env`.

    :raises SettingsError: the first bad value, as one line naming its variable.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise one_line(exc.errors()[0], _SECRET_FIELDS) from None


class _FieldsOnly(PydanticBaseSettingsSource):
    """Wraps a source and drops every key that is not a field of the settings class."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {key: value for key, value in self._inner().items() if key in fields}


class _SecretFiles(PydanticBaseSettingsSource):
    """`MAILROOM_<NAME>_FILE=/path` for the settings of FILE_FIELDS: the file's content, without
    its trailing newline, is the value (an empty file leaves the setting unset)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field in sorted(FILE_FIELDS):
            variable = f"{env_name(field)}_FILE"
            path = self._environ.get(variable, "")
            if not path:
                continue
            if self._environ.get(env_name(field)):
                raise SettingsError(
                    variable, f"set either {env_name(field)} or {variable}, not both"
                )
            value = read_secret_file(variable, Path(path))
            if value:
                values[field] = value
        return values


def read_secret_file(variable: str, path: Path) -> str:
    """The text of the secret file `variable` names, without its trailing newline.

    :raises SettingsError: it cannot be read, is too large, or is not UTF-8 (the content is
        never shown).
    """
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SettingsError(variable, f"cannot read '{path}': {exc.strerror or exc}") from None
    if len(data) > _MAX_SECRET_BYTES:
        raise SettingsError(variable, f"'{path}' is larger than {_MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(variable, f"'{path}' is not UTF-8 text") from None
    return text.rstrip("\r\n")


def _secrets_dir(environ: Mapping[str, str]) -> Path | None:
    """MAILROOM_SECRETS_DIR (empty: none), else DEFAULT_SECRETS_DIR when it is a directory.

    :raises SettingsError: MAILROOM_SECRETS_DIR names no directory.
    """
    named = environ.get(SECRETS_DIR_VARIABLE)
    if named is None:
        return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None
    if not named:
        return None
    if not Path(named).is_dir():
        raise SettingsError(SECRETS_DIR_VARIABLE, f"no such directory (got '{named}')")
    return Path(named)


def _one_of(enum: type[_Enum], value: Any) -> _Enum:
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        try:
            return enum(value.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(member.value for member in enum)
    raise ValueError(f"must be one of {choices} (got {value!r})")


def _redact_url(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    return value.replace(f":{parts.password}@", ":***@", 1)
