"""Warm workers (docs/warm-workers.md): one runtime runs many calls of its own pool.

End to end with the local launcher: the worker's pid tells calls of the same
worker apart, Postgres's attempts table says which worker ran each attempt.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from conftest import Platform, local_platform, wait_until
from podfn import remote
from podfn.errors import CallTimeout
from podfn_platform.database import Database

pytestmark = pytest.mark.e2e


@remote(max_calls_per_worker=None, idle_timeout=2)
def pid_of(i: int) -> int:
    return os.getpid()


def _attempts(db: Database, ids: list[str]) -> list[dict[str, Any]]:
    with db.connect(name="podfn-test") as conn:
        return conn.execute(
            "SELECT call_id, attempt, state, ref, worker FROM podfn_attempts "
            "WHERE call_id = ANY(%s) ORDER BY launched_at", (ids,)).fetchall()


def test_a_worker_runs_several_calls_in_one_process(platform: Platform) -> None:
    pids = [pid_of.remote(i) for i in range(5)]
    assert len(set(pids)) == 1, f"sequential calls should share one warm worker: {pids}"


@remote(max_calls_per_worker=2, idle_timeout=5)
def pid_of_budget(i: int) -> int:
    return os.getpid()


@remote(max_calls_per_worker=None, idle_timeout=5)
def other_pid(i: int) -> int:
    return os.getpid()


# Long enough that a loaded machine's gap between two calls stays under it.
@remote(max_calls_per_worker=None, idle_timeout=2)
def brief(i: int) -> int:
    return os.getpid()


def _pid_or_hang(mode: str, path: str = "") -> Any:
    """'pid': this worker's pid; 'hang': note the pid in `path` once, then hang. The
    note appears whole (written aside, then renamed): a test that sees the file
    reads the pid."""
    if mode == "hang" and not os.path.exists(path):
        with open(path + ".part", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".part", path)
        time.sleep(60)
    return (os.getpid(), os.environ.get("PODFN_CALL_ID"), os.environ.get("PODFN_ATTEMPT"))


work = remote(max_calls_per_worker=None, idle_timeout=10, timeout=2)(_pid_or_hang)
# The same, with a timeout no test waits for.
held = remote(max_calls_per_worker=None, idle_timeout=10, timeout=120)(_pid_or_hang)


def test_attempts_name_their_worker_and_share_its_ref(platform: Platform) -> None:
    calls = [pid_of.spawn(i) for i in range(3)]
    for c in calls:
        c.result()
    rows = _attempts(platform.db, [c.id for c in calls])
    origin = f"{rows[0]['call_id']}/{rows[0]['attempt']}"
    workers = {r["worker"] or f"{r['call_id']}/{r['attempt']}" for r in rows}
    refs = {r["ref"] for r in rows}
    assert len(workers) == len(refs), rows
    assert origin in workers and all(r["state"] == "succeeded" for r in rows)


def test_a_worker_exits_when_idle(platform: Platform) -> None:
    first = brief.remote(0)
    assert brief.remote(1) == first
    wait_until(lambda: not platform.controller.launcher.active(), 20, "the idle worker to exit")
    assert brief.remote(2) != first, "a new worker after the idle one left"


def test_a_worker_honours_its_call_budget(platform: Platform) -> None:
    pids = [pid_of_budget.remote(i) for i in range(5)]
    counts = {p: pids.count(p) for p in pids}
    assert max(counts.values()) == 2 and len(counts) == 3, pids


def test_pools_never_mix(platform: Platform) -> None:
    a = [pid_of.remote(i) for i in range(2)]
    b = [other_pid.remote(i) for i in range(2)]
    assert len(set(a)) == 1 and len(set(b)) == 1 and set(a).isdisjoint(b)


@remote(max_calls_per_worker=None, idle_timeout=5)
def chatty_pid(i: int) -> int:
    import subprocess

    print(f"call {i} says hello")
    os.write(2, f"call {i} to fd 2\n".encode())
    subprocess.run(["echo", f"call {i} from a child"], check=True)
    return os.getpid()


def test_each_warm_call_keeps_its_own_output(platform: Platform) -> None:
    """A warm worker keeps its capture's pipes from call to call (capture.py): what
    each call wrote is its own, none of the call before it or after it."""
    calls = [chatty_pid.spawn(i) for i in range(12)]
    pids = [call.result() for call in calls]
    assert len(set(pids)) < len(pids), "the calls should share warm workers"
    for i, call in enumerate(calls):
        logs = call.logs()
        assert logs.stdout == f"call {i} says hello\ncall {i} from a child\n", (i, logs)
        assert logs.stderr == f"call {i} to fd 2\n", (i, logs)


def test_a_map_with_no_budget_starts_few_workers(platform: Platform) -> None:
    pids = list(pid_of.map(range(60)))
    assert len(pids) == 60
    assert len(set(pids)) <= platform.settings.max_concurrency


def test_a_dead_worker_requeues_only_its_call_as_a_disruption(
        platform: Platform, tmp_path: Any) -> None:
    pid, first_id, _ = work.remote("pid")
    marker = tmp_path / "hang"
    hanging = work.spawn("hang", str(marker))
    wait_until(marker.exists, 20, "the warm worker to take the call")
    assert int(marker.read_text()) == pid, "the idle warm worker took the call"
    os.kill(pid, signal.SIGTERM)  # as a kubelet or an operator stops a pod
    new_pid, call_id, attempt = hanging.result()
    assert call_id == hanging.id and attempt == "2" and new_pid != pid
    rows = {(r["call_id"], r["attempt"]): r for r in _attempts(platform.db,
                                                                 [first_id, hanging.id])}
    assert rows[(first_id, 1)]["state"] == "succeeded"
    assert rows[(hanging.id, 1)]["state"] == "disrupted"
    assert rows[(hanging.id, 1)]["worker"] == f"{first_id}/1"


def test_a_call_for_a_busy_pool_gets_a_worker_of_its_own(
        database_url: str, runtime_database_url: str, db: Database,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The controller leaves a call queued alone for a pool with a live worker to that
    worker for a moment (WARM_QUEUED_GRACE); when the worker is busy, the turn after
    it starts another one, long before the sweep would."""
    with local_platform(database_url, runtime_database_url, db, monkeypatch,
                        sweep_seconds=60.0):
        pid, _, _ = held.remote("pid")
        marker = tmp_path / "hang"
        hanging = held.spawn("hang", str(marker))
        wait_until(marker.exists, 20, "the warm worker to take the call")
        started = time.monotonic()
        other, _, _ = held.remote("pid")
        took = time.monotonic() - started
        assert other != pid
        assert hanging.status() == "running", "the second call did not wait for the busy worker"
        assert took < 30, f"the second call waited {took:.1f} s: for the sweep, not its turn"
        hanging.cancel()


def test_a_warm_call_keeps_its_own_timeout(platform: Platform, tmp_path: Any) -> None:
    pid, _, _ = work.remote("pid")
    marker = tmp_path / "hang"
    with pytest.raises(CallTimeout):
        work.remote("hang", str(marker))
    assert int(marker.read_text()) == pid, "the call ran in the warm worker"
