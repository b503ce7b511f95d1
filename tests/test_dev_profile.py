"""`podfn dev` for a person at a terminal: a stable admin token, one platform per
profile, a line per finished call instead of access logs, a 401 that says why."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from podfn import remote
from podfn.cli.server import stable_token
from podfn_platform.dev import free_port


def test_the_admin_token_is_stable_per_data_directory(tmp_path: Path) -> None:
    first = stable_token(tmp_path / "data")
    assert stable_token(tmp_path / "data") == first
    assert stable_token(tmp_path / "other") != first
    assert stat.S_IMODE((tmp_path / "data" / "admin-token").stat().st_mode) == 0o600


def test_an_unrecognised_token_is_told_why(api_only: str) -> None:
    response = httpx.get(f"{api_only}/v1/calls", headers={"Authorization": "Bearer stale"})
    assert response.status_code == 401
    assert "this token was not recognised (was the platform restarted with a new data " \
           "directory?)" in response.json()["error"]["message"]
    missing = httpx.get(f"{api_only}/v1/calls")
    assert "a valid bearer token is required" in missing.json()["error"]["message"]


@pytest.mark.e2e
def test_dev_prints_call_events_and_refuses_a_second_platform_on_its_profile(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = tmp_path / "profile.json"
    env = {**os.environ, "PODFN_DATABASE_URL": database_url, "PODFN_PROFILE": str(profile)}
    for name in ("PODFN_URL", "PODFN_TOKEN", "PODFN_ACCESS_LOG"):
        env.pop(name, None)
    data_dir = tmp_path / "data"
    dev = subprocess.Popen([sys.executable, "-m", "podfn", "dev", "--port", str(free_port()),
                            "--data-dir", str(data_dir)], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert dev.stdout is not None
        assert dev.stdout.readline().startswith("podfn is running at")
        assert json.loads(profile.read_text())["token"] == stable_token(data_dir)

        second = subprocess.run([sys.executable, "-m", "podfn", "dev", "--port",
                                 str(free_port()), "--data-dir", str(tmp_path / "data2")],
                                env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 4
        assert "a podfn platform is already running at" in second.stderr
        assert "PODFN_PROFILE=" in second.stderr

        monkeypatch.delenv("PODFN_URL", raising=False)
        monkeypatch.delenv("PODFN_TOKEN", raising=False)
        monkeypatch.setenv("PODFN_PROFILE", str(profile))
        call = remote(pow).spawn(2, 5)
        assert call.result(timeout=60) == 32
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while not any(call.id in line for line in seen):
            assert time.monotonic() < deadline, f"no event line for {call.id}: {seen}"
            seen.append(dev.stdout.readline())
        [event] = [line for line in seen if call.id in line]
        assert f"  pow  {call.id}  succeeded in " in event
        assert not any('"method"' in line for line in seen), "access log lines without --verbose"
    finally:
        dev.send_signal(signal.SIGINT)
        dev.communicate(timeout=60)
