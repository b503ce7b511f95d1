"""The controller rides out database trouble and rows it cannot process.

Faults are real: backends killed with pg_terminate_backend from a superuser
connection, a database refusing new connections, rows written straight into
podfn_calls as an older version (or a corruption) might have left them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from conftest import platform_settings
from podfn import remote
from podfn.call import Call
from podfn.errors import CallFailed
from podfn_platform.controller.leader import LeaderLock, LeadershipLost
from podfn_platform.controller.local import LocalLauncher
from podfn_platform.controller.loop import Controller, backoff_seconds
from podfn_platform.database import Database

pytestmark = pytest.mark.e2e

CONTROLLER_APPS = ("podfn-controller", "podfn-controller-lock", "podfn-listener")


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def dbname(url: str) -> str:
    return str(conninfo_to_dict(url)["dbname"])


def terminate(admin_url: str, database_url: str, apps: tuple[str, ...]) -> int:
    """pg_terminate_backend every connection of `apps` to the test's database; how many."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = ANY(%s) AND pid <> pg_backend_pid()",
            (dbname(database_url), list(apps))).fetchall()
    return len(rows)


def allow_connections(admin_url: str, database_url: str, allow: bool) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname(database_url)}" '
                     f"ALLOW_CONNECTIONS {'true' if allow else 'false'}")


@contextmanager
def controller(database_url: str) -> Iterator[tuple[Controller, threading.Thread]]:
    """A controller as `podfn controller` builds it (its own pool), run in a thread."""
    settings = platform_settings(database_url)
    wake = threading.Event()
    db = Database(database_url, max_size=4, name="podfn-controller").open()
    ctl = Controller(settings, db, LocalLauncher(database_url, on_exit=wake.set), wake)
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert ctl.is_active.wait(10), "the controller did not become active"
        yield ctl, thread
    finally:
        stop.set()
        wake.set()
        thread.join(15)
        db.close()
    assert not thread.is_alive(), "the controller did not stop"


def blocked_work(tmp_path: Path) -> tuple[object, Path, Path]:
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()

    @remote
    def work(i: int) -> int:
        started.joinpath(f"{i}-{os.getpid()}").touch()
        while not release.exists():
            time.sleep(0.02)
        return i * 10

    return work, started, release


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    assert 0.05 <= backoff_seconds(1) <= 0.1
    assert 0.4 <= backoff_seconds(4) <= 0.8
    assert all(2.5 <= backoff_seconds(n) <= 5.0 for n in (7, 50, 10_000))
    assert len({backoff_seconds(3) for _ in range(20)}) > 1


def test_controller_outlives_its_connections_and_a_database_refusing_connections(
        api_only: str, database_url: str, postgres_url: str, tmp_path: Path) -> None:
    work, started, release = blocked_work(tmp_path)
    with controller(database_url) as (ctl, thread):
        calls = [work.spawn(i) for i in range(3)]  # type: ignore[attr-defined]
        wait_for(lambda: len(list(started.iterdir())) == 3)

        allow_connections(postgres_url, database_url, False)
        try:
            assert terminate(postgres_url, database_url, CONTROLLER_APPS) >= 2
            ctl.wake.set()
            wait_for(lambda: ctl.database_errors >= 3)
            assert thread.is_alive() and ctl.is_active.is_set()
            assert len(ctl.launcher.active()) == 3, "running attempts must keep running"
        finally:
            allow_connections(postgres_url, database_url, True)

        turns = ctl.turns
        wait_for(lambda: ctl.turns > turns)  # back to work, with the lock re-taken
        assert ctl.leader.held
        release.touch()
        assert [c.result(timeout=60) for c in calls] == [0, 10, 20]
        for call in calls:
            info = call.info()
            assert (info["attempt"], info["disruptions"], info["user_failures"]) == (1, 0, 0)
        assert remote(abs).remote(-7) == 7  # and it still launches new calls
        assert thread.is_alive()


def test_killed_pool_and_lock_connections_cost_nothing(
        api_only: str, database_url: str, postgres_url: str, tmp_path: Path) -> None:
    work, started, release = blocked_work(tmp_path)
    with controller(database_url) as (ctl, thread):
        calls = [work.spawn(i) for i in range(4)]  # type: ignore[attr-defined]
        wait_for(lambda: len(list(started.iterdir())) == 4)
        for _ in range(3):  # again and again, while the attempts run
            assert terminate(postgres_url, database_url, CONTROLLER_APPS) >= 1
            ctl.wake.set()
            turns = ctl.turns
            wait_for(lambda t=turns: ctl.turns > t)  # type: ignore[misc]
        release.touch()
        assert [c.result(timeout=60) for c in calls] == [0, 10, 20, 30]
        assert all(c.info()["attempt"] == 1 for c in calls)
        assert thread.is_alive() and ctl.leader.held


def test_a_lock_session_killed_is_re_taken_unless_another_took_it(
        database_url: str, postgres_url: str) -> None:
    with Database(database_url, name="podfn-test-leader") as db:
        first = LeaderLock(db)
        assert first.try_acquire()
        terminate(postgres_url, database_url, ("podfn-controller-lock",))
        first.check()  # re-taken on a new session: nobody else wanted it
        assert first.held

        terminate(postgres_url, database_url, ("podfn-controller-lock",))
        second = LeaderLock(db)
        assert second.try_acquire()  # a standby got there first
        with pytest.raises(LeadershipLost, match="another controller"):
            first.check()
        assert not first.held
        second.release()


BAD_SPECS = [  # a stored spec the controller cannot run, and words its reason must hold
    ('"not an object"', "spec: must be a JSON object"),
    ('{"retries": 3000000000}', "retries"),
    ('{"memory": 512}', "too little to run Python"),
    ('{"timeout": "soon"}', "timeout"),
    ('{"memroy": "1Gi"}', "memroy"),
]


def test_a_row_the_controller_cannot_process_fails_alone(platform: object,
                                                          db: Database) -> None:
    # All the bad rows at once, on one platform: each fails with its own reason, and
    # neither they nor the calls queued beside them stop the others from running.
    good = remote(abs).spawn(-1)
    assert good.result(timeout=30) == 1
    with db.transaction() as tx:
        for i, (spec, _) in enumerate(BAD_SPECS):
            tx._conn.execute(
                "INSERT INTO podfn_calls (id, function_name, function_digest, args, spec, "
                "client_python, client_cloudpickle) "
                "SELECT %s, function_name, function_digest, args, %s::jsonb, client_python, "
                "client_cloudpickle FROM podfn_calls WHERE id = %s", (f"bad-{i}", spec, good.id))
        tx._conn.execute("SELECT pg_notify('podfn_queued', '')")
    others = [remote(abs).spawn(-i) for i in range(2, 5)]
    for i, (_, words) in enumerate(BAD_SPECS):
        with pytest.raises(CallFailed) as info:
            Call(f"bad-{i}").result(timeout=30)
        assert "stored spec cannot be run" in str(info.value.reason)
        assert words in str(info.value.reason)
        row = db.one("get_call", {"id": f"bad-{i}"})
        assert row is not None and row["user_failures"] == 0 and row["disruptions"] == 0
    assert [c.result(timeout=30) for c in others] == [2, 3, 4]


def test_a_controller_whose_lock_another_took_stops_and_the_next_one_runs_calls(
        api_only: str, database_url: str, postgres_url: str) -> None:
    with Database(database_url, name="podfn-test-standby") as db, \
            controller(database_url) as (ctl, thread):
        standby = LeaderLock(db)
        for _ in range(5):  # the standby must take the freed lock before the controller does
            terminate(postgres_url, database_url, ("podfn-controller-lock",))
            deadline = time.monotonic() + 2
            while not standby.try_acquire() and time.monotonic() < deadline:
                time.sleep(0.005)
            if standby.held:
                break
        assert standby.held
        ctl.wake.set()
        thread.join(15)
        assert not thread.is_alive() and not ctl.is_active.is_set()
        standby.release()
    with controller(database_url):
        assert remote(abs).remote(-3) == 3
