"""The `mailroom` console script's skeleton: commands, --help, and one-line bad-input errors.

Every test runs the real CLI in a subprocess (`python -m tasks.cli`) with a controlled
environment and working directory, so no MAILROOM_* variable or `.env` of the outer world leaks in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Run:
    """What one `mailroom` run printed and returned."""

    status: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def run_mailroom(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path, timeout: float = 30
) -> Run:
    """Run `mailroom ARGS` with only PATH, PYTHONPATH and `env` set, in `cwd` (no `.env` there)."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args],
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def assert_usage_error(run: Run, *words: str) -> None:
    """docs/contract.md: one non-empty line on stderr naming the problem, exit 2, no stdout."""
    assert run.status == 2, run
    assert run.stdout == ""
    [line] = run.stderr_lines
    assert line.startswith("mailroom: "), line
    assert "Traceback" not in run.stderr
    assert "usage:" not in run.stderr
    for word in words:
        assert word in line


def test_help_lists_the_commands_and_exits_0(tmp_path: Path) -> None:
    run = run_mailroom("--help", cwd=tmp_path)

    assert run.status == 0
    assert "usage: mailroom" in run.stdout
    assert "check" in run.stdout
    assert run.stderr == ""


def test_command_help_works_even_with_a_bad_setting(tmp_path: Path) -> None:
    run = run_mailroom("check", "--help", env={"MAILROOM_DELIVERY": "smtp"}, cwd=tmp_path)

    assert run.status == 0
    assert "--send-to" in run.stdout


def test_no_command_is_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_usage_error(run_mailroom(cwd=tmp_path), "no command", "check")


def test_unknown_command_is_one_line_and_exit_2(tmp_path: Path) -> None:
    assert_usage_error(run_mailroom("frobnicate", cwd=tmp_path), "frobnicate")


@pytest.mark.parametrize(
    "args",
    [("check", "--bogus"), ("check", "--domain")],
    ids=["unknown-option", "missing-value"],
)
def test_bad_option_is_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    assert_usage_error(run_mailroom(*args, cwd=tmp_path), args[-1])


def test_bad_setting_is_one_line_naming_the_variable_and_exit_2(tmp_path: Path) -> None:
    run = run_mailroom(
        "check", "--domain", "implicit.test", env={"MAILROOM_DELIVERY": "smtp"}, cwd=tmp_path
    )

    assert_usage_error(run, "MAILROOM_DELIVERY", "smtp")


def test_bad_setting_in_dotenv_of_the_working_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAILROOM_SHARDS=many\n")

    run = run_mailroom("check", "--domain", "implicit.test", cwd=tmp_path)

    assert_usage_error(run, "MAILROOM_SHARDS")


def test_the_installed_console_script_runs_main(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("mailroom")
    done = subprocess.run(
        [str(script)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert_usage_error(Run(done.returncode, done.stdout, done.stderr), "no command")
