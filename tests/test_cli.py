"""The `podfn` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from podfn.cli import cli


def podfn(*args: str, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podfn", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("command", ["migrate", "serve", "controller", "dev", "demo"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_migrate_applies_then_reports_up_to_date(empty_database_url: str) -> None:
    env = {"PODFN_DATABASE_URL": empty_database_url}
    first = podfn("migrate", env=env)
    assert first.returncode == 0 and "applied 0001_calls" in first.stdout
    again = podfn("migrate", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_migrate_without_a_database_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PODFN_DATABASE_URL"}
    result = subprocess.run([sys.executable, "-m", "podfn", "migrate"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 4
    assert "PODFN_DATABASE_URL is not set" in result.stderr


def test_unreachable_database_exit_code() -> None:
    result = podfn("migrate", env={"PODFN_DATABASE_URL": "postgresql://x@127.0.0.1:1/none"})
    assert result.returncode == 3 and "unavailable" in result.stderr


@pytest.mark.e2e
def test_demo_runs_the_example(database_url: str) -> None:
    result = podfn("demo", env={"PODFN_DATABASE_URL": database_url}, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "add.remote(2, 3)                 -> 5" in out
    assert "-> 9" in out and "[11, 22, 33]" in out
    assert "NotPositive" in out and "CallTimeout" in out
    assert "temporary platform stopped" in out
