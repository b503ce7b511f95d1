"""Standing workers (docs/warm-workers.md): `min_workers` of a deployed function, end to end.

The local launcher's own records say which processes run; Postgres's attempts
table says which worker ran each call; a counting wrapper around `launch`
says whether serving a call started a process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

import podfn
from conftest import Platform, local_platform, wait_until
from podfn import remote
from podfn.http import APIClient
from podfn_platform.database import Database

pytestmark = pytest.mark.e2e


@remote(name="standing", min_workers=2, max_calls_per_worker=None, idle_timeout=0.1)
def standing(x: int) -> list[int]:
    return [os.getpid(), x]


@remote(name="standing", min_workers=1, max_calls_per_worker=None)
def standing_v2(x: int) -> list[int]:
    return [os.getpid(), x * 10]


@remote(name="crowd", min_workers=3, max_calls_per_worker=None)
def crowd(x: int) -> int:
    return x


@remote
def plain(x: int) -> int:
    return -x


def _standing(platform: Platform) -> dict[str, Any]:
    """The standing workers the launcher runs, with their rows: {name: row}."""
    held = [w for w in platform.controller.launcher.workers() if w.startswith("standing-")]
    with platform.db.connect(name="podfn-test") as conn:
        rows = conn.execute("SELECT name, function_version, ref, retired_at FROM podfn_workers "
                            "WHERE name = ANY(%s)", (held,)).fetchall()
    return {r["name"]: r for r in rows if r["ref"]}


def _ready(platform: Platform, version: int, count: int) -> dict[str, Any]:
    """Wait until exactly `count` standing workers of `version` run, and nothing else."""
    def check() -> dict[str, Any] | None:
        found = _standing(platform)
        ok = (len(found) == count and
              all(r["function_version"] == version and r["retired_at"] is None
                  for r in found.values()))
        return found if ok else None
    found: dict[str, Any] = wait_until(check, what=f"{count} standing workers of version {version}")
    return found


def _invoke(platform: Platform, x: int, token: str | None = None) -> dict[str, Any]:
    with httpx.Client(base_url=platform.url, timeout=60,
                      headers={"Authorization": f"Bearer {token or platform.token}"}) as client:
        response = client.post("/v1/functions/standing/invoke", json={"args": [x]})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _worker_of(platform: Platform, call_id: str) -> list[tuple[int, str | None]]:
    with platform.db.connect(name="podfn-test") as conn:
        rows = conn.execute("SELECT attempt, worker FROM podfn_attempts WHERE call_id = %s "
                            "ORDER BY attempt", (call_id,)).fetchall()
    return [(r["attempt"], r["worker"]) for r in rows]


def test_min_workers_are_kept_and_serve_invokes_without_a_process_start(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = platform.controller.launcher
    launched: list[str] = []
    launch = launcher.launch

    def counting(attempt: Any) -> str:
        launched.append(attempt.call_id)
        ref: str = launch(attempt)
        return ref

    monkeypatch.setattr(launcher, "launch", counting)
    standing.deploy()
    workers = _ready(platform, 1, 2)  # nothing queued
    ready_at = time.monotonic()
    assert len(launched) == 2 and set(launched) == set(workers)
    pids = {int(r["ref"].removeprefix("pid:")) for r in workers.values()}
    first = _invoke(platform, 3)
    assert first["value"][1] == 3 and first["value"][0] in pids
    # Another tenant's invoke of the same version is served by the same pool.
    other = APIClient(platform.url, platform.token).create_token("billing", ["invoke"])
    second = _invoke(platform, 4, other["token"])
    assert second["value"] == [second["value"][0], 4] and second["value"][0] in pids
    for body in (first, second):
        [(attempt, worker)] = _worker_of(platform, body["id"])
        assert attempt == 1 and worker in workers
    # The deployer's own call from Python (its pickles are the deployer's code) too.
    call = podfn.Function.lookup("standing").spawn(6)
    assert call.result()[1] == 6 and call.result()[0] in pids
    [(attempt, worker)] = _worker_of(platform, call.id)
    assert attempt == 1 and worker in workers
    assert len(launched) == 2, f"serving the invokes started processes: {launched}"
    # Idle for well past idle_timeout (0.1 s), and still there: showing that something
    # does not happen takes the time it would have taken.
    time.sleep(max(0.0, ready_at + 0.5 - time.monotonic()))
    assert set(_standing(platform)) == set(workers) and len(launched) == 2


def test_a_new_version_or_a_removed_function_stops_them(platform: Platform) -> None:
    standing.deploy()
    old = _ready(platform, 1, 2)
    standing_v2.deploy()
    new = _ready(platform, 2, 1)
    assert set(new).isdisjoint(old)
    body = _invoke(platform, 5)
    assert body["value"][1] == 50
    assert _worker_of(platform, body["id"]) == [(1, next(iter(new)))]
    with platform.db.connect(name="podfn-test") as conn:  # as a delete of the function would
        conn.execute("DELETE FROM podfn_functions WHERE name = 'standing'")
    platform.controller.wake.set()
    wait_until(lambda: not _standing(platform), what="the standing workers to exit")

    def rows() -> int:
        with platform.db.connect(name="podfn-test") as conn:
            return int(conn.execute("SELECT count(*) AS n FROM podfn_workers").fetchone()["n"])

    # The controller removes a worker's row at its first turn after the launcher saw
    # the process end (warm.sql), which can come just after the launcher let go.
    wait_until(lambda: rows() == 0, what="the standing workers' rows to be removed")


def _starts() -> float:
    return REGISTRY.get_sample_value("podfn_standing_worker_starts_total") or 0.0


def test_a_standing_worker_that_dies_is_replaced(platform: Platform) -> None:
    started = _starts()
    standing.deploy()
    workers = _ready(platform, 1, 2)
    assert _starts() - started == 2
    victim = sorted(workers)[0]
    os.kill(int(workers[victim]["ref"].removeprefix("pid:")), signal.SIGKILL)
    replaced = wait_until(what="a replacement", predicate=lambda: (
        (found := _standing(platform)) and len(found) == 2 and victim not in found and found))
    assert set(workers) - {victim} < set(replaced)
    assert _starts() - started == 3
    assert _invoke(platform, 1)["state"] == "succeeded"
    with platform.db.connect(name="podfn-test") as conn:
        states = conn.execute("SELECT state FROM podfn_calls").fetchall()
    assert [s["state"] for s in states] == ["succeeded"], "the death touched no call"


@pytest.fixture
def two_slots(database_url: str, runtime_database_url: str, db: Database,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """The embedded platform with PODFN_MAX_CONCURRENCY=2."""
    with local_platform(database_url, runtime_database_url, db, monkeypatch,
                        max_concurrency=2) as running:
        yield running


def test_standing_workers_take_only_free_slots(two_slots: Platform) -> None:
    crowd.deploy()
    before = wait_until(what="two standing workers", predicate=lambda: (
        (found := _standing(two_slots)) and len(found) == 2 and found))
    assert len(two_slots.controller.launcher.active()) == 2, "min_workers=3 got past 2 slots"
    # Both slots hold idle standing workers: a call of another pool still runs, when
    # one of them yields its slot (the call waited for over a second).
    assert plain.remote(4) == -4
    assert set(before) - set(_standing(two_slots)), "no standing worker gave its slot up"
    assert len(two_slots.controller.launcher.active()) <= 2
