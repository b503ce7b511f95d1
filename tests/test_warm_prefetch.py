"""A warm worker claims several calls at once and records several at once (migration 0012).

The protocol half plays the runtime as test_warm_protocol.py does (the runtime
role, each attempt's secret); the platform half runs real warm workers with
one worker per pool, so that worker holds the calls it claimed ahead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_warm_protocol import WARM, ran_once, submit

from attempts import UNARMED, Runtime
from conftest import Platform, explaining, local_platform, wait_until
from podfn import remote
from podfn.errors import CallTimeout
from podfn_platform.database import Database
from podfn_runtime.database import RuntimeDatabase, _pack
from podfn_runtime.queries import protocol


def _fresh(k: int) -> list[tuple[str, str]]:
    made = [secrets.token_hex(32) for _ in range(k)]
    return [(s, hashlib.sha256(s.encode()).hexdigest()) for s in made]


def next_many(rt: Runtime, call_id: str, attempt: int, k: int,
              secret: str | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """next_many through (call_id, attempt); the rows and each claimed call's secret."""
    fresh = _fresh(k)
    rdb = RuntimeDatabase(rt.url, secret or rt.secrets[(call_id, attempt)])
    try:
        rows = rdb.rows("next_many", id=call_id, attempt=attempt,
                        secret_hashes=[h for _, h in fresh])
    finally:
        rdb.close()
    held = {r["id"]: fresh[r["ordinal"] - 1][0] for r in rows if r["verdict"] == "claimed"}
    return rows, held


def succeed_many(rt: Runtime, done: list[tuple[str, str]], *,
                 starts: list[tuple[str, str]] = (),  # type: ignore[assignment]
                 chain: tuple[str, str] | None = None,
                 next_hashes: list[str] | None = None) -> list[dict[str, Any]]:
    """succeed_many of (call id, secret) pairs at attempt 1, with start marks, and a
    claim through `chain` (call id, secret) at attempt 1."""
    n = len(done)
    rdb = RuntimeDatabase(rt.url, "unused")
    try:
        return rdb.rows("succeed_many", ids=[i for i, _ in done], attempts=[1] * n,
                        secrets=[s for _, s in done], results=[b"r"] * n,
                        results_json=[None] * n, stdouts=[""] * n, stderrs=[""] * n,
                        peak_bytes=[1] * n, cpu_seconds=[0.1] * n, wall_seconds=[0.1] * n,
                        start_ids=[i for i, _ in starts], start_attempts=[1] * len(starts),
                        start_secrets=[s for _, s in starts],
                        next_id=chain[0] if chain else None, next_attempt=1 if chain else None,
                        next_secret=chain[1] if chain else None, next_hashes=next_hashes)
    finally:
        rdb.close()


def attempts(db: Database, ids: list[str]) -> dict[str, dict[str, Any]]:
    with db.connect(name="podfn-test") as conn:
        rows = conn.execute("SELECT a.*, c.state AS call_state, c.user_failures "
                            "FROM podfn_attempts a JOIN podfn_calls c ON c.id = a.call_id "
                            "WHERE a.call_id = ANY(%s) AND a.attempt = 1", (ids,)).fetchall()
    return {r["call_id"]: r for r in rows}


def test_a_worker_claims_several_calls_each_with_its_own_secret(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, *rest = submit(db, abs, n=5)
    ran_once(db, rt, first)
    rows, held = next_many(rt, first, 1, 16)
    assert [r["verdict"] for r in rows] == ["claimed"] * 4
    assert [r["id"] for r in rows] == rest and [r["ordinal"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["function"] is not None and all(r["function"] is None for r in rows[1:])
    found = attempts(db, rest)
    # Held: no clock runs until the worker starts a call (a start mark).
    assert [found[i]["started_at"] for i in rest] == [None] * 4
    assert {found[i]["worker"] for i in rest} == {f"{first}/1"}
    # Only the first may hand on; every secret signs its own call only.
    assert [found[i]["handed_on"] for i in rest] == [False, True, True, True]
    assert rt.call("succeed", rest[0], 1, secret=held[rest[1]], result=b"x", result_json=None,
                   stdout="", stderr="") is None
    recorded = succeed_many(rt, [(i, held[i]) for i in rest[:3]])
    assert [(r["kind"], r["id"]) for r in recorded] == [("succeeded", i) for i in rest[:3]]
    again, _ = next_many(rt, rest[2], 1, 4, secret=held[rest[2]])
    assert [r["verdict"] for r in again] == ["refused"], "a held call's secret never hands on"
    last = succeed_many(rt, [(rest[3], held[rest[3]])], chain=(rest[0], held[rest[0]]),
                        next_hashes=[_fresh(1)[0][1]])
    assert [(r["kind"], r["verdict"]) for r in last] == [("succeeded", None), ("next", "empty")]
    # The outcomes came without start marks: each start is dated from its wall time.
    found = attempts(db, rest)
    assert all(found[i]["started_at"] is not None for i in rest)


def test_an_outcome_is_dated_before_the_mark_written_with_it(
        db: Database, runtime_database_url: str) -> None:
    """A short call's outcome and the next call's start mark in one statement: the
    finished call must start before the running one, or the controller, which
    follows the attempt a worker started last, would follow the finished one (no
    timeout armed, no cancel, a crash not charged). Its start was dated back from
    a clock read after the mark (migration 0015)."""
    rt = Runtime(db, runtime_database_url)
    first = submit(db, abs, n=13)[0]
    ran_once(db, rt, first)
    chain = (first, rt.secrets[(first, 1)])
    worker = f"{first}/1"
    rdb = RuntimeDatabase(rt.url, "unused")
    try:
        for wall in (0.0, 0.00005) * 3:
            fresh = _fresh(2)
            rows = rdb.rows("next_many", id=chain[0], attempt=1, secret=chain[1],
                            secret_hashes=[h for _, h in fresh])
            assert [r["verdict"] for r in rows] == ["claimed"] * 2, rows
            (done, done_secret), (running, running_secret) = [
                (r["id"], fresh[r["ordinal"] - 1][0]) for r in rows]
            rdb.rows("succeed_many", ids=[done], attempts=[1], secrets=[done_secret],
                     results=[b"r"], results_json=[None], stdouts=[""], stderrs=[""],
                     peak_bytes=[1], cpu_seconds=[0.0], wall_seconds=[wall],
                     start_ids=[running], start_attempts=[1], start_secrets=[running_secret],
                     next_id=None, next_attempt=None, next_secret=None, next_hashes=None)
            found = attempts(db, [done, running])
            assert found[done]["started_at"] < found[running]["started_at"], wall
            [now] = db.all("worker_attempts", {"workers": [worker], "ids": [first],
                                                "attempts": [1]})
            assert now["id"] == running and now["busy"], "the running call, not the finished"
            rdb.rows("succeed_many", ids=[running], attempts=[1], secrets=[running_secret],
                     results=[b"r"], results_json=[None], stdouts=[""], stderrs=[""],
                     peak_bytes=[1], cpu_seconds=[0.0], wall_seconds=[0.01],
                     start_ids=[], start_attempts=[], start_secrets=[], next_id=None,
                     next_attempt=None, next_secret=None, next_hashes=None)
            chain = (done, done_secret)  # the first of the claim hands on
    finally:
        rdb.close()


def test_a_batch_of_outcomes_keeps_each_calls_own_values(
        db: Database, runtime_database_url: str) -> None:
    """The arrays go to Postgres as one JSON document and the results as one binary
    parameter (database.py, `_pack`): each outcome must get its own result, output
    and usage back out of them, whatever their sizes; NaN usage stores NULL and an
    infinity its bound, as the one-call path's `usage` does."""
    rt = Runtime(db, runtime_database_url)
    first, a, b, c, d = submit(db, abs, n=5)
    ran_once(db, rt, first)
    _, held = next_many(rt, first, 1, 16)
    results = [b"\x00" * 3, None, b"", bytes(range(256)) * 9]
    given = [d, c, b, a]  # not the order the calls were made: answered in this order
    rdb = RuntimeDatabase(rt.url, "unused")
    try:
        rows = rdb.rows("succeed_many", ids=given, attempts=[1] * 4,
                        secrets=[held[i] for i in given], results=results,
                        results_json=[None, '"\\u00e9 \u00e9"', None, None],
                        stdouts=["out a", "", "\u00e9\n", ""], stderrs=["", "err b", "", ""],
                        peak_bytes=[1, 2, 3, 1 << 40], cpu_seconds=[0.5, float("nan"), 0.25, -float("inf")],
                        wall_seconds=[float("inf"), 0.125, 0.0, 2.0], start_ids=[a],
                        start_attempts=[1], start_secrets=[held[a]], next_id=None,
                        next_attempt=None, next_secret=None, next_hashes=None)
    finally:
        rdb.close()
    assert [(r["kind"], r["id"]) for r in rows] == [("succeeded", i) for i in given]
    with db.connect(name="podfn-test") as conn:
        calls = {r["id"]: r for r in conn.execute(
            "SELECT id, result, result_json, stdout, stderr FROM podfn_calls "
            "WHERE id = ANY(%s)", (given,)).fetchall()}
    assert [None if calls[i]["result"] is None else bytes(calls[i]["result"])
            for i in given] == results
    assert [calls[i]["result_json"] for i in given] == [None, '"\\u00e9 \u00e9"', None,
                                                                None]
    assert [(calls[i]["stdout"], calls[i]["stderr"]) for i in given] == [
        ("out a", ""), ("", "err b"), ("\u00e9\n", ""), ("", "")]
    found = attempts(db, given)
    assert [found[i]["peak_bytes"] for i in given] == [1, 2, 3, 1 << 40]
    assert [found[i]["cpu_seconds"] for i in given] == [0.5, None, 0.25, 0.0]
    assert [found[i]["wall_seconds"] for i in given] == [1e9, 0.125, 0.0, 2.0]


def test_a_claim_of_several_yields_to_an_older_call_of_another_pool(
        db: Database, runtime_database_url: str) -> None:
    """`next_many` answers `yield` as `next` does (migration 0013 looks the older call
    up through an index of queued calls by age), and claims once nothing older waits."""
    rt = Runtime(db, runtime_database_url)
    first, *mine = submit(db, abs, n=4)
    ran_once(db, rt, first)
    [other] = submit(db, round)
    with db.connect(name="podfn-test") as conn:
        conn.execute("UPDATE podfn_calls SET created_at = clock_timestamp() - interval '1 minute'"
                     " WHERE id = %s", (other,))
    rows, _ = next_many(rt, first, 1, 4)
    assert [r["verdict"] for r in rows] == ["yield"], "the older call of another pool goes first"
    with db.connect(name="podfn-test") as conn:
        conn.execute("UPDATE podfn_calls SET created_at = clock_timestamp() + interval '1 minute'"
                     " WHERE id = %s", (other,))
    rows, _ = next_many(rt, first, 1, 4)
    assert [(r["verdict"], r["id"]) for r in rows] == [("claimed", i) for i in mine]
    assert attempts(db, [other]) == {}, "the other pool's call stays queued"


def test_an_older_call_in_backoff_is_yielded_to_once_its_backoff_is_over(
        db: Database, runtime_database_url: str) -> None:
    """The `yield` check asks calls not held back by age and calls in backoff by the
    end of their backoff (migration 0014): an older call of another pool whose
    backoff is not over does not take the worker's place; once it is over, it does."""
    rt = Runtime(db, runtime_database_url)
    first, *mine = submit(db, abs, n=5)
    ran_once(db, rt, first)
    [other] = submit(db, round)

    def backoff(until: str) -> None:
        with db.connect(name="podfn-test") as conn:
            conn.execute("UPDATE podfn_calls SET created_at = clock_timestamp() - "
                         f"interval '1 minute', not_before = clock_timestamp() {until} "
                         "WHERE id = %s", (other,))

    backoff("- interval '1 second'")
    rows, _ = next_many(rt, first, 1, 2)
    assert [r["verdict"] for r in rows] == ["yield"], "its backoff is over: it goes first"
    backoff("+ interval '1 hour'")
    rows, _ = next_many(rt, first, 1, 2)
    assert [(r["verdict"], r["id"]) for r in rows] == [("claimed", i) for i in mine[:2]]


def test_a_workers_statements_look_rows_up_by_key_whatever_the_statistics(
        db: Database, runtime_database_url: str, database_url: str) -> None:
    """A session keeps a statement's plan; one made while the tables were young read
    podfn_attempts whole at every record (migration 0012: a hash join of the outcomes,
    and of the start marks, over a sequential scan). Migration 0013 plans by key.
    The plans a session runs are shown by auto_explain, as notices of that session."""
    rt = Runtime(db, runtime_database_url)
    # Older calls of another pool, in backoff, counted by ANALYZE while this pool has
    # no queued call: a planner that trusts those statistics reads them all to find
    # this pool's calls (migration 0014).
    backlog = submit(db, round, n=300)
    with db.connect(name="podfn-test") as conn:
        conn.execute("UPDATE podfn_calls SET not_before = clock_timestamp() + interval '1 hour'"
                     " WHERE id = ANY(%s)", (backlog,))
        conn.execute("ANALYZE podfn_calls")
    first, *rest = submit(db, abs, n=41)
    ran_once(db, rt, first)
    statements = protocol()
    with explaining(database_url) as (conn, plans):
        fresh = _fresh(4)
        rows = conn.execute(statements["next_many"], _pack("next_many", {
            "id": first, "attempt": 1, "secret": rt.secrets[(first, 1)],
            "secret_hashes": [h for _, h in fresh]}), binary=True).fetchall()
        claimed = 0
        while rows and rows[0]["verdict"] == "claimed":  # enough statements for a generic plan
            held = [(r["id"], fresh[r["ordinal"] - 1][0]) for r in rows]
            claimed += len(held)
            fresh = _fresh(4)
            n = len(held)
            rows = conn.execute(statements["succeed_many"], _pack("succeed_many", {
                "ids": [i for i, _ in held], "attempts": [1] * n,
                "secrets": [s for _, s in held], "results": [b"r"] * n,
                "results_json": [None] * n, "stdouts": [""] * n, "stderrs": [""] * n,
                "peak_bytes": [1] * n, "cpu_seconds": [0.1] * n, "wall_seconds": [0.1] * n,
                "start_ids": [i for i, _ in held[:2]], "start_attempts": [1, 1][:n],
                "start_secrets": [s for _, s in held[:2]], "next_id": held[0][0],
                "next_attempt": 1, "next_secret": held[0][1],
                "next_hashes": [h for _, h in fresh]}), binary=True).fetchall()
            rows = [r for r in rows if r["kind"] == "next"]
    assert claimed == len(rest)
    assert any("podfn_attempts_pkey" in plan for plan in plans)
    scans = [plan for plan in plans if "Seq Scan on podfn_" in plan]
    assert scans == [], "a warm worker's statement read a table whole"
    # The claimed calls are updated by address (or key), never found by reading the
    # queue (podfn_calls_queued_by_age holds every pool's queued calls) and keeping
    # those at the addresses: migration 0014.
    by_queue = [plan for plan in plans if "ctid = ANY" in plan
                and re.search(r"(using|Scan on) podfn_calls_queued_by", plan)]
    assert by_queue == [], "a claim read the queue to find the calls it picked"
    # Whether an older call of another pool may run now is asked of two indexes, not
    # of every queued call, skipping those whose backoff is not over (0014 too).
    skipping = [plan for plan in plans if "pool <>" in plan
                and re.search(r"Filter: [^\n]*not_before <=", plan)]
    assert skipping == [], "a claim read other pools' queued calls to skip those in backoff"
    others = [plan for plan in plans if "pool =" in plan and "podfn_calls_unfinished" in plan]
    assert others == [], "a claim read other pools' calls to find its own pool's"


def test_a_claim_keeps_the_call_budget(db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, *_ = submit(db, abs, n=10, spec={**WARM, "max_calls_per_worker": 4})
    ran_once(db, rt, first)
    rows, _ = next_many(rt, first, 1, 16)
    assert len(rows) == 3, "the worker's first call counts: 4 in all"
    rows, _ = next_many(rt, first, 1, 16, secret="wrong")
    assert [r["verdict"] for r in rows] == ["refused"]


def test_a_worker_takes_its_share_of_the_queue_not_all_of_it(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, second, *_ = submit(db, abs, n=10)
    ran_once(db, rt, first)
    # Alone in its pool, a worker could take all 9 queued (up to 16): another worker
    # of the pool is busy (its first call), so it takes half.
    [row] = db.all("claim_queued", {"limit": 1, **UNARMED})
    assert row["id"] == second and rt.claim(second, 1) is not None
    rows, _ = next_many(rt, first, 1, 16)
    assert len(rows) == 4 and {r["verdict"] for r in rows} == {"claimed"}


def test_alone_in_its_pool_a_worker_takes_what_is_queued(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, *_ = submit(db, abs, n=9)
    ran_once(db, rt, first)
    rows, _ = next_many(rt, first, 1, 16)
    assert len(rows) == 8


def test_outcomes_are_fenced_one_by_one(db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, a, b, c = submit(db, abs, n=4)
    ran_once(db, rt, first)
    _, held = next_many(rt, first, 1, 16)
    db.all("cancel", {"id": c, "reason": "no longer wanted"})
    recorded = succeed_many(rt, [(a, held[a]), (b, "not-the-secret"), (c, held[c])],
                            starts=[(b, held[b]), (c, held[c])])
    assert [r["id"] for r in recorded if r["kind"] == "succeeded"] == [a]
    found = attempts(db, [a, b, c])
    assert (found[a]["state"], found[a]["cpu_seconds"]) == ("succeeded", 0.1)
    assert found[b]["state"] == "running" and found[b]["started_at"] is not None
    assert found[c]["state"] == "cancelled" and found[c]["call_state"] == "cancelled"
    # b was marked (its outcome's secret was wrong); a cancelled call whose outcome
    # came along is not marked (the worker is past it: nothing to stop).
    assert found[c]["started_at"] is None


def test_a_held_call_cancelled_then_started_is_marked_so_its_worker_is_stopped(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, a, b = submit(db, abs, n=3)
    ran_once(db, rt, first)
    _, held = next_many(rt, first, 1, 16)
    db.all("cancel", {"id": b, "reason": "no longer wanted"})
    succeed_many(rt, [(a, held[a])], starts=[(b, held[b])])
    [row] = db.all("worker_attempts", {"workers": [f"{first}/1"], "ids": [first],
                                       "attempts": [1]})
    assert (row["id"], row["call_state"]) == (b, "cancelled")


def test_the_controller_follows_the_call_a_worker_started_not_the_ones_it_holds(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, a, b, _c = submit(db, abs, n=4)
    ran_once(db, rt, first)
    _, held = next_many(rt, first, 1, 16)
    name = f"{first}/1"
    query = {"workers": [name], "ids": [first], "attempts": [1]}
    [row] = db.all("worker_attempts", query)
    assert (row["id"], row["busy"], row["holding"]) == (first, False, True), \
        "holding calls, none started"
    time.sleep(0.3)  # the start mark must restart the clock: let some time pass first
    succeed_many(rt, [(a, held[a])], starts=[(b, held[b])])
    [row] = db.all("worker_attempts", query)
    assert (row["id"], row["busy"]) == (b, True)
    assert row["running_seconds"] < 0.25, "b's clock runs from its start mark, not its claim"
    # The worker is gone: every call it held is requeued as a disruption.
    orphans = db.all("orphaned_warm_attempts", {"workers": []})
    assert {r["id"] for r in orphans} == {b, _c}


# -- with a platform: one worker per pool, so it holds what it claimed ahead --


@pytest.fixture
def one_worker(database_url: str, runtime_database_url: str, db: Database,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    with local_platform(database_url, runtime_database_url, db, monkeypatch,
                        warm_pool_workers=1) as running:
        yield running


@remote(max_calls_per_worker=None, idle_timeout=20, timeout=2)
def step(mode: str, path: str = "") -> Any:
    """'pid': this worker's pid; 'hang': note the pid in `path` once, then hang;
    'nap': 1.2 s, under the 2 s timeout."""
    if mode == "hang" and not os.path.exists(path):
        Path(path).write_text(str(os.getpid()))
        time.sleep(60)
    if mode == "nap":
        time.sleep(1.2)
    return os.getpid()


def _claimed_ahead(db: Database, ids: list[str], worker: str) -> bool:
    found = attempts(db, ids)
    return len(found) == len(ids) and all(r["worker"] == worker for r in found.values())


def test_a_dead_worker_requeues_every_call_it_held_as_a_disruption(
        one_worker: Platform, tmp_path: Path) -> None:
    pid = step.remote("pid")
    [first] = one_worker.db.all("list_calls", {"state": None, "function": None, "limit": 1})
    marker = str(tmp_path / "hang")
    results = step.map(["hang", "pid"], [marker] * 2)  # one request: both claimed at once
    ids = [r["id"] for r in one_worker.db.all("list_calls", {"state": None, "function": None,
                                                             "limit": 10})
           if r["id"] != first["id"]]
    wait_until(lambda: os.path.exists(marker), 20, "the warm worker to take the calls")
    wait_until(lambda: _claimed_ahead(one_worker.db, ids, f"{first['id']}/1"), 20,
               "the worker to hold both")
    os.kill(pid, signal.SIGTERM)
    assert len(set(results)) == 1 and set(results) != {pid}, "all ran again, elsewhere"
    found = attempts(one_worker.db, ids)
    assert {r["state"] for r in found.values()} == {"disrupted"}
    assert {r["user_failures"] for r in found.values()} == {0}, "retries untouched"


def test_a_held_calls_timeout_runs_from_its_start(one_worker: Platform, tmp_path: Path) -> None:
    step.remote("pid")
    marker = str(tmp_path / "hang")
    results = step.map(["nap", "nap", "nap", "hang"], [marker] * 4, return_exceptions=True)
    # 3.6 s of naps in one worker, each under its 2 s timeout: none times out; the
    # call that hangs past its own does.
    outcome = list(results)
    assert len(set(outcome[:3])) == 1 and isinstance(outcome[0], int), outcome
    assert isinstance(outcome[3], CallTimeout), outcome
    assert int(Path(marker).read_text()) == outcome[0], "the hanging call ran in that worker"


@remote(max_calls_per_worker=3, idle_timeout=20)
def pid_of(i: int) -> int:
    return os.getpid()


def test_a_map_keeps_the_call_budget_of_each_worker(one_worker: Platform) -> None:
    pids = list(pid_of.map(range(10)))
    assert max(pids.count(p) for p in pids) <= 3 and len(set(pids)) >= 4


@remote(max_calls_per_worker=None, idle_timeout=20, retries=0)
def fragile(mode: str) -> int:
    if mode == "crash":
        os._exit(3)  # the whole worker dies, with calls it holds
    if mode == "nap":
        time.sleep(0.1)  # long enough for a start mark
    return os.getpid()


def test_a_call_that_kills_its_worker_fails_alone(one_worker: Platform) -> None:
    fragile.remote("ok")
    outcome = list(fragile.map(["ok", "crash", "ok"], return_exceptions=True))
    assert isinstance(outcome[0], int) and isinstance(outcome[2], int), outcome
    assert isinstance(outcome[1], Exception) and "code 3" in str(outcome[1]), outcome
    rows = one_worker.db.all("list_calls", {"state": None, "function": None, "limit": 10})
    assert sorted(r["state"] for r in rows) == ["failed"] + ["succeeded"] * 3
    crashed = next(r for r in rows if r["state"] == "failed")
    assert "code 3" in (crashed["reason"] or ""), "its own exit, not a disruption"


def test_a_crash_right_after_a_marked_call_is_not_charged_to_it(one_worker: Platform) -> None:
    """'nap' runs long enough for its start mark; 'crash', held behind it, kills the
    worker at once. Were 'nap's outcome still in the recorder then, Postgres would
    show 'nap' as the unfinished call the worker started last, and its exit would
    be charged to it (a CI failure of the test above, once)."""
    fragile.remote("ok")
    outcome = list(fragile.map(["nap", "crash", "nap", "crash"], return_exceptions=True))
    assert isinstance(outcome[0], int) and isinstance(outcome[2], int), outcome
    for crashed in (outcome[1], outcome[3]):
        assert isinstance(crashed, Exception) and "code 3" in str(crashed), outcome
    rows = one_worker.db.all("list_calls", {"state": None, "function": None, "limit": 10})
    assert sorted(r["state"] for r in rows) == ["failed"] * 2 + ["succeeded"] * 3


def test_a_batch_never_carries_a_nul_to_postgres() -> None:
    """Postgres' JSON has no NUL; its error would quote the batch around one, secrets
    included: each NUL goes as U+FFFD (a secret so changed simply does not match)."""
    params: dict[str, Any] = {
        "ids": ["a"], "attempts": [1], "secrets": ["se\x00cret"], "results": [b"\x00"],
        "results_json": [None], "stdouts": ["out\x00put"], "stderrs": [""], "peak_bytes": [1],
        "cpu_seconds": [0.5], "wall_seconds": [1.0], "start_ids": [], "start_attempts": [],
        "start_secrets": [], "next_id": None, "next_attempt": None, "next_secret": None,
        "next_hashes": None}
    packed = _pack("succeed_many", params)
    assert "\\u0000" not in packed["batch"] and packed["results"] == b"\x00"
    batch = json.loads(packed["batch"])
    assert batch["secrets"] == ["se\ufffdcret"] and batch["stdouts"] == ["out\ufffdput"]
