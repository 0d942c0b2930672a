"""Settings read from the environment and `.env`: defaults, one-line errors, secrets kept secret."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from settings import (
    DeliveryMode,
    Listen,
    MtaSts,
    Nameserver,
    Rate,
    RelayProfile,
    RelaySecurity,
    Settings,
    SettingsError,
    SubmissionTls,
    load_settings,
)

PASSWORD = "pa55-w0rd-never-shown"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MAILROOM_* variable and no `.env` from outside reaches these tests."""
    for name in list(os.environ):
        if name.upper().startswith("MAILROOM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _set(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"MAILROOM_{name}", value)


def _error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **overrides: Any) -> str:
    _set(monkeypatch, env)
    with pytest.raises(SettingsError) as excinfo:
        load_settings(**overrides)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.strip() == message
    assert message
    return message


# The Settings table of docs/contract.md, plus the timeouts added beside it.
DEFAULTS: dict[str, object] = {
    "redis_url": "redis://127.0.0.1:6379/0",
    "shards": 8,
    "delivery": DeliveryMode.MX,
    "routes": {},
    "relay_host": None,
    "relay_port": 587,
    "relay_security": RelaySecurity.STARTTLS,
    "relay_username": None,
    "relay_password": None,
    "mx_port": 25,
    "dns_nameservers": (),
    "mx_deny_networks": (),
    "tls_ca_file": None,
    "mta_sts": MtaSts.ON,
    "rate_limits": {},
    "retry_delays": (60, 300, 900, 1800, 3600, 7200, 14400, 28800),
    "max_age": 432000,
    "max_message_bytes": 26214400,
    "idempotency_ttl": 86400,
    "content_ttl": None,
    "status_ttl": None,
    "dead_letter_ttl": 604800,
    "suppression_ttl": None,
    "events_maxlen": 100_000,
    "webhooks": (),
    "events_task": None,
    "events_queue": "mailroom.events",
    "webhook_retry_for": 86400,
    "events_claim_timeout": 300,
    "dkim_keys": (),
    "max_connections": {"*": 20},
    "relay_profile": RelayProfile.NONE,
    "relay_auth": None,
    "oauth_tenant": None,
    "oauth_client_id": None,
    "oauth_client_secret": None,
    "oauth_client_certificate_file": None,
    "oauth_scope": None,
    "oauth_authority": "https://login.microsoftonline.com/{tenant}",
    "oauth_service_account_file": None,
    "relay_probe_interval": 60,
    "flower_listen": Listen("127.0.0.1", 5555),
    "flower_basic_auth": None,
    "metrics_listen": Listen("127.0.0.1", 9808),
    "submission_listen": Listen("127.0.0.1", 587),
    "submission_tls": SubmissionTls.STARTTLS,
    "submission_cert_file": None,
    "submission_key_file": None,
    "submission_accounts": None,
    "submission_max_recipients": 100,
    "submission_max_connections": 100,
    "submission_max_connections_per_client": 20,
    "visibility_timeout": 900,
    "redis_timeout": 10,
    "connect_timeout": 30.0,
    "command_timeout": 300.0,
    "data_timeout": 600.0,
    "session_timeout": 600.0,
    "dns_timeout": 10.0,
    "log_level": "info",
    "connection_reuse": True,
    "connection_max_messages": 100,
    "connection_idle_timeout": 5.0,
}


def test_defaults_match_the_design_table() -> None:
    settings = load_settings()
    assert {name: getattr(settings, name) for name in DEFAULTS} == DEFAULTS
    assert settings.helo_name == socket.getfqdn()
    assert set(Settings.model_fields) == {*DEFAULTS, "helo_name"}


@pytest.mark.parametrize(("text", "days"), [("30", 30), ("permanent", None), ("", None)])
def test_suppression_ttl_is_days_or_permanent(text: str, days: int | None) -> None:
    assert Settings(suppression_ttl=text).suppression_ttl == days


def test_suppression_ttl_below_one_day_is_refused() -> None:
    with pytest.raises(ValidationError, match="suppression_ttl"):
        Settings(suppression_ttl="0")


def test_environment_values_are_parsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    _set(
        monkeypatch,
        {
            "DELIVERY": "relay",
            "RELAY_HOST": "smtp.office365.com",
            "RELAY_PORT": "465",
            "RELAY_SECURITY": "tls",
            "RELAY_USERNAME": "svc@example.com",
            "RELAY_PASSWORD": PASSWORD,
            "RELAY_PROFILE": "office365",
            "DNS_NAMESERVERS": "127.0.0.1:5353,[::1]:5353",
            "TLS_CA_FILE": str(ca_file),
            "HELO_NAME": "mailroom.example.com",
            "RATE_LIMITS": '{"relay": "30/m", "gmail.com": "5/s"}',
            "RETRY_DELAYS": "10,20",
            "MAX_CONNECTIONS": '{"*": 3}',
            "FLOWER_LISTEN": "0.0.0.0:5555",
            "FLOWER_BASIC_AUTH": "admin:secret",
            "SESSION_TIMEOUT": "120.5",
            "SUBMISSION_TLS": "tls",
        },
    )
    settings = load_settings()
    assert settings.delivery is DeliveryMode.RELAY
    assert settings.relay_host == "smtp.office365.com"
    assert settings.relay_port == 465
    assert settings.relay_security is RelaySecurity.TLS
    assert settings.relay_password is not None
    assert settings.relay_password.get_secret_value() == PASSWORD
    assert settings.relay_profile is RelayProfile.OFFICE365
    assert settings.dns_nameservers == (Nameserver("127.0.0.1", 5353), Nameserver("::1", 5353))
    assert settings.tls_ca_file == ca_file
    assert settings.helo_name == "mailroom.example.com"
    assert settings.rate_limits == {"relay": Rate(30, 60), "gmail.com": Rate(5, 1)}
    assert settings.retry_delays == (10, 20)
    assert settings.max_connections == {"*": 3}
    assert settings.flower_listen == Listen("0.0.0.0", 5555)
    assert settings.session_timeout == 120.5
    assert settings.submission_tls is SubmissionTls.TLS


def test_keyword_arguments_take_raw_strings_or_parsed_values() -> None:
    raw = Settings(
        dns_nameservers="127.0.0.1:5353",
        rate_limits='{"a.example": "2/s"}',
        retry_delays="5,10",
        max_connections='{"*": 4}',
        metrics_listen="127.0.0.1:9100",
    )
    parsed = Settings(
        dns_nameservers=[Nameserver("127.0.0.1", 5353)],
        rate_limits={"a.example": Rate(2, 1)},
        retry_delays=[5, 10],
        max_connections={"*": 4},
        metrics_listen=Listen("127.0.0.1", 9100),
    )
    mixed = Settings(
        dns_nameservers=["127.0.0.1:5353"],
        rate_limits={"a.example": "2/s"},
        retry_delays=(5, 10),
    )
    for settings in (raw, parsed):
        assert settings.dns_nameservers == (Nameserver("127.0.0.1", 5353),)
        assert settings.rate_limits == {"a.example": Rate(2, 1)}
        assert settings.retry_delays == (5, 10)
        assert settings.max_connections == {"*": 4}
        assert settings.metrics_listen == Listen("127.0.0.1", 9100)
    assert mixed.dns_nameservers == raw.dns_nameservers
    assert mixed.rate_limits == raw.rate_limits
    assert mixed.retry_delays == raw.retry_delays


def test_keyword_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {"SHARDS": "4", "MX_PORT": "2525"})
    settings = load_settings(shards=2)
    assert (settings.shards, settings.mx_port) == (2, 2525)


def test_words_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {"DELIVERY": " Relay ", "RELAY_HOST": "smtp.example.com"})
    assert load_settings().delivery is DeliveryMode.RELAY


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.shards = 3


def test_unrelated_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {"SOMETHING_ELSE": "x", "SHARDS_EXTRA": "0"})
    monkeypatch.setenv("SHARDS", "0")
    assert load_settings().shards == 8


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {"RELAY_HOST": "", "DNS_NAMESERVERS": "", "SHARDS": ""})
    settings = load_settings()
    assert (settings.relay_host, settings.dns_nameservers, settings.shards) == (None, (), 8)


def test_unknown_keyword_argument_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, {}, shard=3)
    assert message == "MAILROOM_SHARD: is not a known setting"


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# comment\n"
        "MAILROOM_SHARDS=3\n"
        "MAILROOM_MX_PORT=2525\n"
        'MAILROOM_RATE_LIMITS={"gmail.com": "30/m"}\n'
        "MAILROOM_NOT_A_SETTING=1\n"
        "OTHER_TOOL=yes\n"
    )
    monkeypatch.setenv("MAILROOM_MX_PORT", "2626")
    settings = load_settings()
    assert settings.shards == 3
    assert settings.mx_port == 2626  # the environment wins over .env
    assert settings.rate_limits == {"gmail.com": Rate(30, 60)}


def test_bad_value_in_dotenv_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAILROOM_DELIVERY=smtp\n")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert str(excinfo.value) == "MAILROOM_DELIVERY: must be one of mx, relay (got 'smtp')"


def test_unknown_delivery_gives_the_exact_line(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, {"DELIVERY": "smtp"})
    assert message == "MAILROOM_DELIVERY: must be one of mx, relay (got 'smtp')"


BAD_VALUES = [
    # (environment, variable named, fragment of the problem)
    ({"RELAY_HOST": "192.0.2.25"}, "RELAY_HOST", "not an IP address"),
    ({"RELAY_HOST": "2001:db8::25"}, "RELAY_HOST", "not an IP address"),
    ({"RELAY_HOST": "[2001:db8::25]"}, "RELAY_HOST", "not an IP address"),
    ({"DELIVERY": "relay", "RELAY_HOST": "192.0.2.25"}, "RELAY_HOST", "not an IP address"),
    ({"DELIVERY": "relay", "RELAY_HOST": "[::1]"}, "RELAY_HOST", "not an IP address"),
    ({"RELAY_HOST": "smtp..example.com"}, "RELAY_HOST", "valid DNS name"),
    ({"RELAY_HOST": "smtp_relay.example.com"}, "RELAY_HOST", "valid DNS name"),
    ({"RELAY_HOST": "smtp.example.com:587"}, "RELAY_HOST", "without a port"),
    ({"DELIVERY": "relay"}, "RELAY_HOST", "required when MAILROOM_DELIVERY=relay"),
    ({"RELAY_SECURITY": "ssl"}, "RELAY_SECURITY", "must be one of starttls, tls (got 'ssl')"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "must be one of debug, info, warning, error (got 'loud')"),
    ({"RELAY_PROFILE": "gmail"}, "RELAY_PROFILE", "must be one of none, office365"),
    ({"SUBMISSION_TLS": "none"}, "SUBMISSION_TLS", "must be one of starttls, tls"),
    ({"MTA_STS": "enforce"}, "MTA_STS", "must be one of on, off (got 'enforce')"),
    ({"RATE_LIMITS": "30/m"}, "RATE_LIMITS", "must be a JSON object"),
    ({"RATE_LIMITS": '["30/m"]'}, "RATE_LIMITS", "must be a JSON object"),
    ({"RATE_LIMITS": '{"gmail.com": 30}'}, "RATE_LIMITS", '"N/s", "N/m" or "N/h"'),
    ({"RATE_LIMITS": '{"gmail.com": "30/d"}'}, "RATE_LIMITS", "'30/d'"),
    ({"RATE_LIMITS": '{"gmail.com": "0/m"}'}, "RATE_LIMITS", "N >= 1"),
    ({"MAX_CONNECTIONS": '{"*": 0}'}, "MAX_CONNECTIONS", "must be an integer >= 1"),
    ({"MAX_CONNECTIONS": "20"}, "MAX_CONNECTIONS", "must be a JSON object"),
    ({"RETRY_DELAYS": "60,0"}, "RETRY_DELAYS", "> 0"),
    ({"RETRY_DELAYS": "60,-5"}, "RETRY_DELAYS", "'-5'"),
    ({"RETRY_DELAYS": ","}, "RETRY_DELAYS", "whole number of seconds"),
    ({"DNS_NAMESERVERS": "dns.google"}, "DNS_NAMESERVERS", "must be an IP address"),
    ({"DNS_NAMESERVERS": "127.0.0.1:0"}, "DNS_NAMESERVERS", "port must be 1..65535"),
    ({"SHARDS": "0"}, "SHARDS", "must be >= 1 (got '0')"),
    ({"SHARDS": "-3"}, "SHARDS", "must be >= 1"),
    ({"SHARDS": "eight"}, "SHARDS", "must be a whole number (got 'eight')"),
    ({"RELAY_PORT": "0"}, "RELAY_PORT", "must be >= 1"),
    ({"RELAY_PORT": "65536"}, "RELAY_PORT", "must be <= 65535"),
    ({"MX_PORT": "-25"}, "MX_PORT", "must be >= 1"),
    ({"MAX_AGE": "0"}, "MAX_AGE", "must be > 0"),
    ({"MAX_AGE": "-1"}, "MAX_AGE", "must be > 0"),
    ({"MAX_MESSAGE_BYTES": "0"}, "MAX_MESSAGE_BYTES", "must be > 0"),
    ({"IDEMPOTENCY_TTL": "-86400"}, "IDEMPOTENCY_TTL", "must be > 0"),
    ({"VISIBILITY_TIMEOUT": "0"}, "VISIBILITY_TIMEOUT", "must be > 0"),
    ({"CONNECT_TIMEOUT": "0"}, "CONNECT_TIMEOUT", "must be > 0"),
    ({"COMMAND_TIMEOUT": "-1"}, "COMMAND_TIMEOUT", "must be > 0"),
    ({"DATA_TIMEOUT": "0"}, "DATA_TIMEOUT", "must be > 0"),
    ({"SESSION_TIMEOUT": "0"}, "SESSION_TIMEOUT", "must be > 0"),
    ({"DNS_TIMEOUT": "-0.5"}, "DNS_TIMEOUT", "must be > 0"),
    ({"DNS_TIMEOUT": "inf"}, "DNS_TIMEOUT", "must be a finite number"),
    ({"CONNECT_TIMEOUT": "soon"}, "CONNECT_TIMEOUT", "must be a number (got 'soon')"),
    ({"SESSION_TIMEOUT": "900"}, "SESSION_TIMEOUT", "less than MAILROOM_VISIBILITY_TIMEOUT"),
    ({"VISIBILITY_TIMEOUT": "600"}, "SESSION_TIMEOUT", "less than MAILROOM_VISIBILITY_TIMEOUT"),
    ({"FLOWER_LISTEN": "0.0.0.0:5555"}, "FLOWER_BASIC_AUTH", "not a loopback address"),
    ({"FLOWER_LISTEN": "[::]:5555"}, "FLOWER_BASIC_AUTH", "not a loopback address"),
    ({"FLOWER_LISTEN": "flower.internal:5555"}, "FLOWER_BASIC_AUTH", "not a loopback address"),
    ({"FLOWER_LISTEN": "5555"}, "FLOWER_LISTEN", "host:port"),
    ({"METRICS_LISTEN": "127.0.0.1:0"}, "METRICS_LISTEN", "port must be 1..65535"),
    ({"SUBMISSION_LISTEN": "::1:587"}, "SUBMISSION_LISTEN", "needs brackets"),
    ({"TLS_CA_FILE": "/nonexistent/ca.pem"}, "TLS_CA_FILE", "no such file"),
    ({"TLS_CA_FILE": "."}, "TLS_CA_FILE", "no such file"),
    ({"HELO_NAME": "not a name"}, "HELO_NAME", "must be a DNS name"),
    ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL", "redis://"),
    ({"RELAY_USERNAME": "svc@example.com"}, "RELAY_PASSWORD", "required when"),
    ({"RELAY_PASSWORD": PASSWORD}, "RELAY_USERNAME", "required when"),
]


@pytest.mark.parametrize(("env", "variable", "fragment"), BAD_VALUES)
def test_bad_value_gives_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, fragment: str
) -> None:
    message = _error(monkeypatch, env)
    assert message.startswith(f"MAILROOM_{variable}: ")
    assert fragment in message
    assert PASSWORD not in message


def test_good_counterparts_of_the_cross_field_rules(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca_file = tmp_path / "extra-ca.pem"
    ca_file.write_text("")
    _set(
        monkeypatch,
        {
            "DELIVERY": "relay",
            "RELAY_HOST": "smtp.example.com",
            "FLOWER_LISTEN": "[::]:5555",
            "FLOWER_BASIC_AUTH": "ops:pw",
            "SESSION_TIMEOUT": "899.9",
            "TLS_CA_FILE": str(ca_file),
        },
    )
    settings = load_settings()
    assert settings.relay_username is None
    assert settings.relay_password is None
    assert settings.session_timeout < settings.visibility_timeout


def test_relay_host_refused_even_in_mx_mode_with_valid_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error(monkeypatch, {"DELIVERY": "mx", "RELAY_HOST": "198.51.100.7"})
    assert (
        message == "MAILROOM_RELAY_HOST: must be a DNS name, not an IP address (got '198.51.100.7')"
    )


def test_password_never_appears_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(
        monkeypatch,
        {
            "RELAY_USERNAME": "svc@example.com",
            "RELAY_PASSWORD": PASSWORD,
            "FLOWER_BASIC_AUTH": f"ops:{PASSWORD}",
            "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:6379/0",
        },
    )
    settings = load_settings()
    assert settings.relay_password == SecretStr(PASSWORD)
    assert settings.redis_url == f"redis://:{PASSWORD}@127.0.0.1:6379/0"
    for text in (repr(settings), str(settings)):
        assert PASSWORD not in text
        assert "svc@example.com" in text  # the rendering itself is not empty


def test_password_never_appears_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, {"FLOWER_BASIC_AUTH": PASSWORD})
    assert message.startswith("MAILROOM_FLOWER_BASIC_AUTH: ")
    assert PASSWORD not in message
    monkeypatch.delenv("MAILROOM_FLOWER_BASIC_AUTH")
    message = _error(monkeypatch, {"REDIS_URL": f"http://:{PASSWORD}@127.0.0.1"})
    assert message.startswith("MAILROOM_REDIS_URL: ")
    assert PASSWORD not in message
    with pytest.raises(ValidationError) as excinfo:
        Settings(relay_password=PASSWORD, flower_basic_auth=PASSWORD)
    assert PASSWORD not in str(excinfo.value)
    assert PASSWORD not in repr(excinfo.value)


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("0", False), ("true", True)])
def test_connection_reuse_is_a_switch(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("MAILROOM_CONNECTION_REUSE", value)
    assert load_settings().connection_reuse is expected


def test_a_bad_connection_reuse_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILROOM_CONNECTION_REUSE", "sometimes")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "MAILROOM_CONNECTION_REUSE" in message
    assert "\n" not in message


def test_mx_deny_networks_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, {"MX_DENY_NETWORKS": "10.0.0.0/8,fd00::/8"})
    assert [str(n) for n in load_settings().mx_deny_networks] == ["10.0.0.0/8", "fd00::/8"]


def test_a_bad_mx_deny_network_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error(monkeypatch, {"MX_DENY_NETWORKS": "10.0.0.0/8,10.1.2.3/16"})
    assert message.startswith("MAILROOM_MX_DENY_NETWORKS: ")
    assert "'10.1.2.3/16'" in message
