"""compose.yaml as Docker Compose itself reads it (no Docker engine runs on these machines).

`docker-compose config` parses, merges and validates the files against the Compose schema, and
prints the result; the tests read that result rather than the raw YAML, so anchors, merges and
the development overlay are checked as Compose resolves them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.routing import parse_shards

REPO = Path(__file__).resolve().parents[1]
SHARDS = 8  # compose.yaml fixes MAILROOM_SHARDS to 8
WORKERS = ("worker-a", "worker-b")


def compose_config(*files: str, profile: str | None = None) -> dict[str, Any]:
    """The configuration `docker-compose config` resolves from `files`; fails on any error."""
    binary = shutil.which("docker-compose")
    assert binary is not None, "docker-compose is missing: scripts/setup installs it"
    argv = [binary]
    for name in files:
        argv += ["-f", str(REPO / name)]
    if profile is not None:
        argv += ["--profile", profile]
    done = subprocess.run(
        [*argv, "config"], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return compose_config("compose.yaml")


@pytest.fixture(scope="module")
def dev() -> dict[str, Any]:
    return compose_config("compose.yaml", "compose.dev.yaml", profile="dev")


def test_redis_keeps_an_fsynced_append_only_file_on_a_volume(base: dict[str, Any]) -> None:
    redis = base["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    # docker-compose 1.x prints the short forms: "source:target:mode", "host_ip:host:container".
    assert "redis-data:/data:rw" in redis["volumes"]
    assert "redis-data" in base["volumes"]


def test_worker_shard_groups_cover_every_shard_once(base: dict[str, Any]) -> None:
    covered: list[int] = []
    for name in WORKERS:
        service = base["services"][name]
        command = service["command"]
        assert command[:2] == ["worker", "--shards"]
        covered += parse_shards(command[2], SHARDS)
        assert service["environment"]["MAILROOM_SHARDS"] == str(SHARDS)
    assert sorted(covered) == list(range(SHARDS))


def test_worker_groups_can_scale(base: dict[str, Any]) -> None:
    # `--scale` refuses services with a fixed container name or a published host port.
    for name in WORKERS:
        service = base["services"][name]
        assert "container_name" not in service
        assert "ports" not in service
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_published_ports_are_on_loopback_only(dev: dict[str, Any]) -> None:
    published = [
        (name, port)
        for name, service in dev["services"].items()
        for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} == {"flower", "exporter", "mailcatcher", "submission"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_flower_off_loopback_inside_the_container_takes_basic_auth_from_a_secret(
    base: dict[str, Any],
) -> None:
    flower = base["services"]["flower"]
    assert flower["environment"]["MAILROOM_FLOWER_LISTEN"] == "0.0.0.0:5555"
    assert [s["source"] for s in flower["secrets"]] == ["mailroom_flower_basic_auth"]
    assert "MAILROOM_FLOWER_BASIC_AUTH" not in flower["environment"]


def test_secrets_are_files_and_only_the_workers_get_the_relay_password(
    base: dict[str, Any],
) -> None:
    for name, service in base["services"].items():
        env = service.get("environment", {})
        assert not any("PASSWORD" in key or "BASIC_AUTH" in key for key in env), name
        mounted = {s["source"] for s in service.get("secrets", [])}
        # Settings need the relay's username and password together: they go to workers only.
        assert ("mailroom_relay_password" in mounted) == (name in WORKERS), name
        assert ("MAILROOM_RELAY_USERNAME" in env) == (name in WORKERS), name
    assert base["secrets"]["mailroom_relay_password"]["file"].endswith(
        "/secrets/mailroom_relay_password"
    )


def test_development_catcher_gets_the_workers_mail(dev: dict[str, Any]) -> None:
    services = dev["services"]
    catcher_ip = services["mailcatcher"]["networks"]["default"]["ipv4_address"]
    dns_ip = services["devdns"]["networks"]["default"]["ipv4_address"]
    dns_args = services["devdns"]["command"]
    assert f"--address=/catcher.dev/{catcher_ip}" in dns_args
    assert "--mx-host=example.org,catcher.dev,10" in dns_args
    assert "--no-resolv" in dns_args  # every other name is refused: nothing leaves
    for name in WORKERS:
        env = services[name]["environment"]
        assert env["MAILROOM_DNS_NAMESERVERS"] == dns_ip
        assert env["MAILROOM_MX_PORT"] == "1025"
        assert set(services[name]["depends_on"]) == {"redis", "mailcatcher", "devdns"}


def test_development_services_stay_out_of_a_production_start(base: dict[str, Any]) -> None:
    for name in ("mailcatcher", "devdns"):
        assert base["services"][name]["profiles"] == ["dev"]
    for name in WORKERS:
        assert base["services"][name]["environment"]["MAILROOM_DNS_NAMESERVERS"] is None


def test_submission_listener_is_opt_in_and_reads_its_files_from_secrets(
    base: dict[str, Any],
) -> None:
    service = base["services"]["submission"]
    assert service["profiles"] == ["submission"]
    assert service["command"] == ["submission"]
    env = service["environment"]
    for name in ("CERT_FILE", "KEY_FILE", "ACCOUNTS"):
        assert env[f"MAILROOM_SUBMISSION_{name}"].startswith("/run/secrets/")
    assert {"submission_cert", "submission_key", "submission_accounts"} <= set(base["secrets"])
    assert {s["source"] for s in service["secrets"]} == {
        "submission_cert",
        "submission_key",
        "submission_accounts",
    }
