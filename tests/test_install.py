"""Installs from uv.lock: the lock matches pyproject.toml, and a producer's install is small.

A producer that only calls `notify()` installs Mailroom without extras. These tests build that
install for real (uv from .tools/uv, packages from its cache, exactly the locked versions) in a
fresh virtualenv, then use it against a real Redis: `mailroom send` works, and a command that
needs an extra says which one in one line instead of a traceback.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[1]
UV = REPO / ".tools" / "uv" / "bin" / "uv"


def _uv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if not UV.exists():
        pytest.fail(f"{UV} is missing: scripts/setup installs it")
    environment = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", **(env or {})}
    return subprocess.run(
        [str(UV), *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_lock_matches_pyproject_and_pins_every_package_with_hashes() -> None:
    checked = _uv("lock", "--check", "--offline")
    assert checked.returncode == 0, checked.stderr

    lock = tomllib.loads((REPO / "uv.lock").read_text())
    packages = [p for p in lock["package"] if p["name"] != "mailroom"]
    assert packages
    for package in packages:
        files = [package["sdist"]] if "sdist" in package else []
        files += package.get("wheels", [])
        assert files, package["name"]
        assert all(f["hash"].startswith("sha256:") for f in files), package["name"]
    versions = {p["name"]: p["version"] for p in packages}
    # workers/smtp/wire.py takes over aiosmtplib's transport: its next major is a deliberate step.
    assert versions["aiosmtplib"].split(".")[0] == "5"


@pytest.fixture(scope="module")
def producer_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("producer") / "venv"
    synced = _uv(
        "sync", "--locked", "--offline", "--python", "python3",
        env={"UV_PROJECT_ENVIRONMENT": str(venv)},
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    return venv


@pytest.mark.slow
def test_a_producer_install_has_no_worker_packages(producer_venv: Path) -> None:
    probe = (
        "import importlib.util as u; "
        "print(sorted(m for m in ('aiosmtplib', 'aiosmtpd', 'flower', 'prometheus_client', "
        "'dns', 'celery', 'redis', 'pydantic_settings') if u.find_spec(m)))"
    )
    found = subprocess.run(
        [str(producer_venv / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert found.stdout.strip() == "['celery', 'pydantic_settings', 'redis']"


@pytest.mark.slow
def test_a_producer_install_sends_and_names_the_extra_other_commands_need(
    producer_venv: Path, redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MAILROOM_REDIS_URL": redis_server.url}

    def mailroom(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(producer_venv / "bin" / "mailroom"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    sent = mailroom(
        "send", "--from", "app@example.com", "--to", "a@example.org",
        "--subject", "Hi", "--text", "plain body",
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    assert any(message_id in key.decode() for key in redis_client.scan_iter(count=1000))

    needs = {
        ("check", "--domain", "example.org"): "worker",
        ("exporter",): "worker",
        ("flower",): "flower",
        ("submission",): "submission",
        ("catcher",): "catcher",
    }
    for (command, *args), extra in needs.items():
        refused = mailroom(command, *args)
        assert refused.returncode == 2, (command, refused.stderr)
        assert refused.stdout == ""
        [line] = refused.stderr.splitlines()
        assert line.startswith(f"mailroom: {command} needs the '{extra}' extra"), line
