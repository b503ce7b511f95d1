"""A controller killed mid-run: its successor loses no call and runs none twice at one attempt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_forkserver import gone

from podfn import remote
from podfn_platform.database import Database

pytestmark = pytest.mark.e2e


def start_controller(database_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PODFN_DATABASE_URL": database_url, "PODFN_SWEEP_SECONDS": "0.5"}
    with log.open("ab") as sink:
        return subprocess.Popen([sys.executable, "-m", "podfn", "controller"], env=env,
                                stdout=subprocess.DEVNULL, stderr=sink)


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_controller_killed_and_restarted_loses_nothing(api_only: str, database_url: str,
                                                      db: Database, tmp_path: Path) -> None:
    started = tmp_path / "started"
    release = tmp_path / "release"

    @remote
    def work(i: int) -> int:
        started.joinpath(f"{i}-{os.getpid()}").touch()
        while not release.exists():
            time.sleep(0.02)
        return i * 10

    started.mkdir()
    first = start_controller(database_url, tmp_path / "first.log")
    calls = [work.spawn(i) for i in range(3)]
    wait_for(lambda: len(list(started.iterdir())) == 3)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    # Its runtime processes die with it (PDEATHSIG, through the forkserver: a chain of
    # deaths that takes its time on a loaded machine, so wait for the end of it before
    # releasing them); nothing was recorded for them.
    runtimes = [int(f.name.partition("-")[2]) for f in started.iterdir()]
    wait_for(lambda: all(gone(pid) for pid in runtimes))
    assert {c.status() for c in calls} <= {"launching", "running"}

    release.touch()
    second = start_controller(database_url, tmp_path / "second.log")
    try:
        assert [c.result(timeout=60) for c in calls] == [0, 10, 20]
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    for call in calls:
        info = call.info()
        assert info["attempt"] == 2 and info["disruptions"] == 1 and info["user_failures"] == 0
        assert [a["state"] for a in info["attempts"]] == ["disrupted", "succeeded"]
        assert "controller" in info["attempts"][0]["reason"]


def test_two_controllers_one_active(api_only: str, database_url: str, tmp_path: Path) -> None:
    first = start_controller(database_url, tmp_path / "first.log")
    wait_for(lambda: "this controller is active" in (tmp_path / "first.log").read_text())
    second = start_controller(database_url, tmp_path / "second.log")
    wait_for(lambda: "standing by" in (tmp_path / "second.log").read_text())
    try:
        assert remote(abs).remote(-4) == 4
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
        # The standby takes over.
        assert remote(abs).remote(-5) == 5
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    assert "this controller is active" in (tmp_path / "second.log").read_text()
