"""How the controller maps a warm worker's news to the call it runs (docs/warm-workers.md).

Races the end-to-end tests rarely hit, set up in Postgres as the runtime
would leave them and played against a launcher that only records what it is
told. The worker ran `first` and claimed `second` with `next`; the launcher
has not yet heard of `second`.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from test_warm_protocol import next_call, ran_once, submit

from attempts import Runtime
from conftest import explaining, platform_settings
from podfn.errors import DatabaseUnavailable
from podfn_platform.controller import loop
from podfn_platform.controller.launcher import Attempt, Exit
from podfn_platform.controller.loop import Controller
from podfn_platform.database import Database
from podfn_runtime import queries

WARM_SQL = queries.load("podfn_platform.sql", "warm.sql")


class Recorder:
    """A launcher that follows one warm worker and records what the controller asks."""

    def __init__(self, worker: Attempt, *, known: bool = True) -> None:
        self.held = worker
        self.stopped: list[tuple[str, int]] = []
        self.bound: list[tuple[str, Attempt | None]] = []
        self.workers_known = known

    def workers(self) -> dict[str, Attempt]:
        return {self.held.worker: self.held} if self.held.worker else {}

    def rebind(self, worker: str, attempt: Attempt | None, running_seconds: float) -> None:
        self.bound.append((worker, attempt))
        if attempt is not None:
            self.held = attempt

    def active(self) -> list[Attempt]:
        return [self.held] if self.held.worker else []

    def stop(self, key: tuple[str, int]) -> None:
        self.stopped.append(key)


def claimed_second(db: Database, url: str) -> tuple[str, str, Attempt]:
    rt = Runtime(db, url)
    first, second = submit(db, abs, n=2)
    ran_once(db, rt, first)
    row, _ = next_call(rt, first, 1)
    assert row is not None and row["verdict"] == "claimed" and row["id"] == second
    worker = Attempt(first, 1, "f", {}, "", state="running", worker=f"{first}/1")
    return first, second, worker


def controller(database_url: str, db: Database, launcher: Recorder) -> Controller:
    return Controller(platform_settings(database_url), db, launcher,  # type: ignore[arg-type]
                      threading.Event())


def state(db: Database, call_id: str) -> tuple[str, int]:
    with db.connect(name="podfn-test") as conn:
        row = conn.execute("SELECT state, attempt FROM podfn_calls WHERE id = %s",
                           (call_id,)).fetchone()
    assert row is not None
    return row["state"], row["attempt"]


def test_a_timeout_that_races_a_claim_disrupts_the_claimed_call(
        database_url: str, db: Database, runtime_database_url: str) -> None:
    first, second, worker = claimed_second(db, runtime_database_url)
    c = controller(database_url, db, Recorder(worker))
    # The launcher timed the worker out for `first`, which had just ended in time.
    c.record(Exit(worker, "timeout", "timed out after 2 s"))
    assert state(db, first) == ("succeeded", 1)
    assert state(db, second) == ("queued", 1), "the claimed call is requeued, not timed out"
    with db.connect(name="podfn-test") as conn:
        row = conn.execute("SELECT state FROM podfn_attempts WHERE call_id = %s AND attempt = 1",
                           (second,)).fetchone()
    assert row is not None and row["state"] == "disrupted"


def test_a_timeout_of_the_call_in_flight_times_it_out(
        database_url: str, db: Database, runtime_database_url: str) -> None:
    _, second, worker = claimed_second(db, runtime_database_url)
    c = controller(database_url, db, Recorder(worker))
    running = Attempt(second, 1, "f", {}, "", state="running", worker=worker.worker)
    c.record(Exit(running, "timeout", "timed out after 2 s"))
    assert state(db, second)[0] == "timed_out"


def test_a_call_cancelled_before_the_controller_saw_the_claim_stops_the_worker(
        database_url: str, db: Database, runtime_database_url: str) -> None:
    _, second, worker = claimed_second(db, runtime_database_url)
    launcher = Recorder(worker)
    assert db.one("cancel", {"id": second, "reason": "cancelled by test"}) is not None
    c = controller(database_url, db, launcher)
    c.track_workers()
    c.stop_moved_on()
    assert launcher.stopped == [(second, 1)]


def test_orphans_wait_until_the_launcher_knows_its_workers(
        database_url: str, db: Database, runtime_database_url: str) -> None:
    _, second, _ = claimed_second(db, runtime_database_url)
    nobody = Attempt("", 0, "", {}, "")
    c = controller(database_url, db, Recorder(nobody, known=False))
    c.track_workers()
    c.disrupt_orphans()
    assert state(db, second) == ("running", 1), "not disrupted before the first full list"
    c = controller(database_url, db, Recorder(nobody, known=True))
    c.track_workers()
    c.disrupt_orphans()
    assert state(db, second) == ("queued", 1), "disrupted once the launcher knows its workers"


class Launches:
    """A launcher that follows every warm worker it launched (all stay busy)."""

    def __init__(self) -> None:
        self.launched: list[Attempt] = []

    def launch(self, attempt: Attempt) -> str:
        self.launched.append(attempt)
        return f"ref-{attempt.call_id}"

    def workers(self) -> dict[str, Attempt]:
        return {a.worker: a for a in self.launched if a.worker}

    def rebind(self, worker: str, attempt: Attempt | None, running_seconds: float) -> None:
        pass

    def active(self) -> list[Attempt]:
        return list(self.launched)


def test_a_warm_pool_gets_at_most_warm_pool_workers_and_cold_calls_still_launch(
        database_url: str, db: Database) -> None:
    warm = submit(db, abs, n=10)
    cold = submit(db, abs, spec={}, n=2)  # queued after the whole warm map
    launcher = Launches()
    c = Controller(platform_settings(database_url, warm_pool_workers=3), db,
                   launcher, threading.Event())  # type: ignore[arg-type]
    c.launch_queued(c.track_workers())
    assert c.wake.is_set(), "a new worker asks for another turn (it may have hidden calls)"
    for _ in range(2):  # later turns see the 3 busy workers: the pool is full
        c.launch_queued(c.track_workers())
    launched = {a.call_id for a in launcher.launched}
    assert len(launcher.launched) == 5
    assert len(launched & set(warm)) == 3, "3 workers for the warm pool"
    assert set(cold) <= launched, "the cold calls queued behind the map are not held up"
    assert sum(state(db, i) == ("queued", 0) for i in warm) == 7
    assert c.pool_workers.most_common(1)[0][1] == 3


def test_a_warm_worker_is_told_its_pool_and_a_cold_attempt_is_not(
        database_url: str, db: Database) -> None:
    [warm] = submit(db, abs, n=1)
    [cold] = submit(db, abs, spec={}, n=1)
    launcher = Launches()
    c = Controller(platform_settings(database_url), db, launcher,  # type: ignore[arg-type]
                   threading.Event())
    c.launch_queued(c.track_workers())
    env = {a.call_id: a.env for a in launcher.launched}
    with db.connect(name="podfn-test") as conn:
        row = conn.execute("SELECT pool FROM podfn_calls WHERE id = %s", (warm,)).fetchone()
    assert row is not None and env[warm]["PODFN_POOL"] == row["pool"]
    assert "PODFN_POOL" not in env[cold]


def pool_of(db: Database, call_id: str) -> str:
    with db.connect(name="podfn-test") as conn:
        row = conn.execute("SELECT pool FROM podfn_calls WHERE id = %s", (call_id,)).fetchone()
    assert row is not None
    return str(row["pool"])


def test_a_call_queued_alone_for_a_pool_with_a_live_worker_leaves_the_turn_for_later(
        database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "WARM_QUEUED_GRACE", 1.0)  # long enough to see it pending
    [queued] = submit(db, abs, n=1)
    p1 = pool_of(db, queued)
    wake = threading.Event()
    c = Controller(platform_settings(database_url), db, Launches(), wake)  # type: ignore[arg-type]
    c.pool_workers[p1] = 1
    c._retry_at_stale = False
    c._notified("podfn_queued", f"fresh:{p1}")
    assert not wake.is_set(), "the pool's own worker takes the call: no turn at once"
    assert wake.wait(10), "a turn after WARM_QUEUED_GRACE: no worker of the pool took it"
    wake.clear()
    c._cancel_deferred_turn()
    c._notified("podfn_queued", "fresh:p2")
    assert wake.is_set(), "a pool without a live worker: a turn at once"
    assert not c._retry_at_stale, "a new call has no backoff to look for"
    wake.clear()
    c._notified("podfn_queued", "")
    assert wake.is_set() and not c._retry_at_stale, "a batch: a turn at once, no backoff"
    c._notified("podfn_queued", "some-call-id")
    assert c._retry_at_stale, "a requeue may come with a backoff"


def test_a_call_a_worker_took_within_the_grace_costs_no_turn(
        database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "WARM_QUEUED_GRACE", 0.2)
    first, second = submit(db, abs, n=2)
    pool = pool_of(db, first)
    wake = threading.Event()
    c = Controller(platform_settings(database_url), db, Launches(), wake)  # type: ignore[arg-type]
    c.pool_workers[pool] = 1
    for call_id in (first, second):  # both running: as if the pool's workers took them
        with db.connect(name="podfn-test") as conn:
            conn.execute("UPDATE podfn_calls SET state = 'running', attempt = 1 "
                         "WHERE id = %s", (call_id,))
    c._notified("podfn_queued", f"fresh:{pool}")
    timer = c._deferred_turn
    assert timer is not None
    timer.join()
    assert not wake.is_set(), "nothing of the pool is queued: the turn is skipped"
    assert c._deferred_turn is None and not c._deferred_pools


def test_the_look_before_a_late_turn_reads_only_the_pools_queue(
        database_url: str, db: Database) -> None:
    """With statistics taken while another pool had thousands of calls queued and
    this one none, the look as a plain statement read every unfinished call by age
    (9-44 ms, every 50 ms). Planned as the claim is (migration 0015), it reads the
    pool's own index. The plans a session runs are shown by auto_explain."""
    [mine] = submit(db, abs, n=1)
    [theirs] = submit(db, abs, spec={"max_calls_per_worker": None, "idle_timeout": 7}, n=1)
    pool = pool_of(db, mine)
    copy = ("INSERT INTO podfn_calls (id, function_name, function_digest, args, spec, "
            "client_python, client_cloudpickle, owner, state, finished_at) "
            "SELECT %s || g, function_name, function_digest, args, spec, client_python, "
            "client_cloudpickle, owner, %s, %s FROM podfn_calls, generate_series(1, %s) g "
            "WHERE id = %s")
    with db.connect(name="podfn-test") as conn:
        conn.execute(copy, ("q", "queued", None, 20000, theirs))
        conn.execute(copy, ("f", "succeeded", "2026-01-01", 20000, mine))
        conn.execute("UPDATE podfn_calls SET state = 'running', attempt = 1 WHERE id = %s",
                     (mine,))
        conn.execute("ANALYZE podfn_calls")
    with explaining(database_url, analyze=True) as (conn, plans):
        for _ in range(6):  # past psycopg's prepare threshold: the generic plan too
            row = conn.execute(WARM_SQL["still_queued"], {"pools": [pool]}).fetchone()
            assert row is not None and row["queued"] is False
    read = [int(n) for plan in plans for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
    assert any("podfn_calls_queued_by_pool" in plan for plan in plans), plans
    assert max(read, default=0) < 100, "the look read other pools' calls and dropped them"


def test_a_turn_in_between_takes_the_place_of_the_deferred_one(
        database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "WARM_QUEUED_GRACE", 10.0)
    wake = threading.Event()
    c = Controller(platform_settings(database_url), db, Launches(), wake)  # type: ignore[arg-type]
    c.pool_workers["p1"] = 1
    c._notified("podfn_queued", "fresh:p1")
    timer = c._deferred_turn
    assert timer is not None
    c._notified("podfn_queued", "fresh:p1")
    assert c._deferred_turn is timer, "one deferred turn for several calls"
    c._cancel_deferred_turn()  # what the loop does before each turn
    timer.join()
    assert not wake.is_set() and c._deferred_turn is None


def test_no_thread_for_the_deferred_turn_means_a_turn_at_once(
        database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Timer, "start", refused)
    wake = threading.Event()
    c = Controller(platform_settings(database_url), db, Launches(), wake)  # type: ignore[arg-type]
    c.pool_workers["p1"] = 1
    c._notified("podfn_queued", "fresh:p1")
    assert wake.is_set() and c._deferred_turn is None


def test_orphans_are_looked_for_when_the_workers_change(
        database_url: str, db: Database, runtime_database_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, second, worker = claimed_second(db, runtime_database_url)
    launcher = Recorder(worker)
    c = Controller(platform_settings(database_url, sweep_seconds=600), db,
                   launcher, threading.Event())  # type: ignore[arg-type]
    looks: list[str] = []
    real = db.all
    fail_next = [False]

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "orphaned_warm_attempts":
            looks.append(name)
            if fail_next[0]:
                fail_next[0] = False
                raise DatabaseUnavailable("the database went away")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(db, "all", counted)

    def turn() -> None:
        c.track_workers()
        c.disrupt_orphans()
    turn()
    c._orphans_due_at = 0.0  # the follow-up look after a change, done
    turn()
    turn()
    assert len(looks) == 2, "the same live workers: no look until the sweep"
    assert state(db, second) == ("running", 1)
    c._orphans_due_at = 0.0  # the sweep
    fail_next[0] = True
    with pytest.raises(DatabaseUnavailable):
        turn()
    turn()
    assert len(looks) == 4, "a look a database error cut short is due again"
    launcher.held = Attempt("", 0, "", {}, "")  # the worker left the launcher
    turn()
    assert len(looks) == 5
    assert state(db, second) == ("queued", 1), "what the gone worker held is disrupted"
