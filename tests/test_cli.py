"""The `podfn` command as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from podfn import remote
from podfn.cli import cli
from podfn_platform.dev import free_port

TESTS = Path(__file__).resolve().parent


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


@pytest.mark.e2e
def test_dev_with_the_kubernetes_launcher_against_kubesim_as_a_process(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python tests/kubesim` in one process, `podfn dev --launcher kubernetes` in another."""
    kubeconfig = tmp_path / "kubeconfig"
    env = {**os.environ,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    sim = subprocess.Popen([sys.executable, str(TESTS / "kubesim"), "--kubeconfig",
                            str(kubeconfig)], env=env, stdout=subprocess.PIPE, text=True)
    profile = tmp_path / "profile.json"
    dev = None
    try:
        assert sim.stdout is not None
        assert sim.stdout.readline().startswith("http://127.0.0.1:")
        dev_env = {**env, "KUBECONFIG": str(kubeconfig), "PODFN_DATABASE_URL": database_url,
                   "PODFN_NAMESPACE": "default", "PODFN_PROFILE": str(profile)}
        dev_env.pop("PODFN_URL", None)
        dev = subprocess.Popen([sys.executable, "-m", "podfn", "dev", "--launcher", "kubernetes",
                                "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
                               env=dev_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not profile.exists():
            assert dev.poll() is None, "podfn dev exited"
            assert time.monotonic() < deadline, "podfn dev did not write its profile"
            time.sleep(0.1)
        monkeypatch.delenv("PODFN_URL", raising=False)
        monkeypatch.delenv("PODFN_TOKEN", raising=False)
        monkeypatch.setenv("PODFN_PROFILE", str(profile))
        call = remote(pow).spawn(2, 5)
        assert call.result(timeout=60) == 32
        assert call.info()["attempts"][0]["ref"].startswith("podfn-")  # a pod, not a process
    finally:
        if dev is not None:
            dev.send_signal(signal.SIGINT)
            assert dev.wait(30) == 0
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
        if sim.stdout:
            sim.stdout.close()
