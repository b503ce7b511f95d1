"""The call state machine on real Postgres: guards, fencing, final states."""

from __future__ import annotations

from typing import Any

import pytest

from attempts import UNARMED, Runtime
from podfn_platform.database import Database
from podfn_platform.submission import NewCalls, record_calls, store_payload

FINAL = ("succeeded", "failed", "timed_out", "cancelled")


def new_call(db: Database, **spec: Any) -> str:
    with db.transaction() as tx:
        [call_id] = record_calls(tx, NewCalls("f", store_payload(tx, b"f"), spec, "3.11", "3.1"),
                                 [b"a"])
    return call_id


def claim(db: Database) -> dict[str, Any]:
    rows = db.all("claim_queued", {"limit": 1, **UNARMED})
    assert len(rows) == 1
    return rows[0]


def state(db: Database, call_id: str) -> dict[str, Any]:
    row = db.one("get_call", {"id": call_id})
    assert row is not None
    return row


@pytest.fixture
def runtime(db: Database, runtime_database_url: str) -> Runtime:
    return Runtime(db, runtime_database_url)


def fail_params(call_id: str, attempt: int, retryable: bool = True) -> dict[str, Any]:
    return {"id": call_id, "attempt": attempt, "retryable": retryable, "reason": "boom",
            "exit_code": None, "error_type": "E", "error_message": "m", "error_traceback": "tb",
            "error_pickle": None, "stdout": "", "stderr": ""}


def test_happy_path_moves_forward_only(db: Database, runtime: Runtime) -> None:
    call_id = new_call(db)
    claimed = claim(db)
    assert (claimed["id"], claimed["attempt"]) == (call_id, 1)
    assert db.one("claim_queued", {"limit": 5, **UNARMED}) is None
    run = runtime.claim(call_id, 1)
    assert run is not None and run["function"] == b"f" and run["args"] == b"a"
    assert runtime.claim(call_id, 1) is None
    done = runtime.succeed(call_id, 1, b"r", "o")
    assert done is not None and done["state"] == "succeeded"
    assert state(db, call_id)["finished_at"] is not None


@pytest.mark.parametrize("final", FINAL)
def test_final_states_are_final(db: Database, runtime: Runtime, final: str) -> None:
    call_id = new_call(db)
    claim(db)
    runtime.claim(call_id, 1)
    if final == "succeeded":
        runtime.succeed(call_id, 1, b"r", "")
    elif final == "failed":
        db.one("fail", fail_params(call_id, 1, retryable=False))
    elif final == "timed_out":
        db.one("time_out", {"id": call_id, "attempt": 1, "reason": "late"})
    else:
        db.one("cancel", {"id": call_id, "reason": "by test"})
    assert state(db, call_id)["state"] == final
    attempts = [
        ("fail", fail_params(call_id, 1)),
        ("time_out", {"id": call_id, "attempt": 1, "reason": "x"}),
        ("cancel", {"id": call_id, "reason": "x"}),
        ("disrupt", {"id": call_id, "attempt": 1, "reason": "x", "exit_code": None,
                     "max_disruptions": 3}),
    ]
    for name, params in attempts:
        assert db.one(name, params) is None, f"{name} changed a {final} call"
    assert runtime.succeed(call_id, 1, b"x") is None, f"succeed changed a {final} call"
    assert runtime.claim(call_id, 1) is None, f"claim changed a {final} call"
    assert db.one("claim_queued", {"limit": 5, **UNARMED}) is None
    assert state(db, call_id)["state"] == final


def test_a_stale_attempt_cannot_write(db: Database, runtime: Runtime) -> None:
    call_id = new_call(db)
    claim(db)
    runtime.claim(call_id, 1)
    db.one("disrupt", {"id": call_id, "attempt": 1, "reason": "node lost", "exit_code": None,
                       "max_disruptions": 3})
    assert claim(db)["attempt"] == 2
    assert runtime.succeed(call_id, 1, b"old", "") is None
    assert runtime.claim(call_id, 1) is None
    assert runtime.claim(call_id, 2) is not None
    assert runtime.succeed(call_id, 2, b"new", "") is not None
    rows = db.all("finished_calls", {"ids": [call_id], "inline": 1 << 20, "budget": 1 << 20})
    assert rows[0]["result"] == b"new"
    attempts = db.all("get_attempts", {"id": call_id})
    assert [a["state"] for a in attempts] == ["disrupted", "succeeded"]


def test_user_retries_back_off_then_fail(db: Database, runtime: Runtime) -> None:
    call_id = new_call(db, retries=1, retry_backoff=60)
    claim(db)
    runtime.claim(call_id, 1)
    assert db.one("fail", fail_params(call_id, 1))["state"] == "queued"  # type: ignore[index]
    row = state(db, call_id)
    assert row["user_failures"] == 1 and row["not_before"] is not None
    assert db.one("claim_queued", {"limit": 1, **UNARMED}) is None, "claimed before its backoff ended"
    with db.transaction() as tx:
        tx._conn.execute("UPDATE podfn_calls SET not_before = now() WHERE id = %s", (call_id,))
    claim(db)
    runtime.claim(call_id, 2)
    assert db.one("fail", fail_params(call_id, 2))["state"] == "failed"  # type: ignore[index]


def test_non_retryable_failures_do_not_spend_retries(db: Database, runtime: Runtime) -> None:
    call_id = new_call(db, retries=5)
    claim(db)
    runtime.claim(call_id, 1)
    assert db.one("fail", fail_params(call_id, 1, retryable=False))["state"] == "failed"  # type: ignore[index]


def test_disruptions_do_not_spend_user_retries_up_to_the_platform_limit(db: Database) -> None:
    call_id = new_call(db, retries=0)
    for attempt in (1, 2):
        assert claim(db)["attempt"] == attempt
        row = db.one("disrupt", {"id": call_id, "attempt": attempt, "reason": "evicted",
                                 "exit_code": None, "max_disruptions": 2})
        assert row is not None and row["state"] == "queued"
    claim(db)
    row = db.one("disrupt", {"id": call_id, "attempt": 3, "reason": "evicted", "exit_code": None,
                             "max_disruptions": 2})
    assert row is not None and row["state"] == "failed"
    final = state(db, call_id)
    assert final["user_failures"] == 0
    assert "platform retries exhausted after 3 disruptions" in final["reason"]


def test_cancel_from_queued(db: Database) -> None:
    call_id = new_call(db)
    assert db.one("cancel", {"id": call_id, "reason": "r"})["state"] == "cancelled"  # type: ignore[index]
    assert db.one("claim_queued", {"limit": 5, **UNARMED}) is None


@pytest.mark.parametrize("spec", [
    '{"retries": 3000000000, "retry_backoff": 1.7e308}',
    '{"retries": "many", "retry_backoff": "slow"}',
    '{"retries": 1e400, "retry_backoff": -5}',
    '"not an object"',
])
def test_fail_clamps_what_a_row_holds_instead_of_overflowing(db: Database, runtime: Runtime,
                                                             spec: str) -> None:
    """A spec no validator saw (an older version's row, a corrupted one) still fails cleanly."""
    call_id = new_call(db)
    with db.transaction() as tx:
        tx._conn.execute("UPDATE podfn_calls SET spec = %s::jsonb, user_failures = 999 "
                         "WHERE id = %s", (spec, call_id))
    claim(db)
    runtime.claim(call_id, 1)
    row = db.one("fail", fail_params(call_id, 1))
    assert row is not None and row["state"] in ("queued", "failed")
    after = state(db, call_id)
    if after["state"] == "queued":  # backoff capped at 300 s
        wait = (after["not_before"] - after["launched_at"]).total_seconds()
        assert 0 <= wait <= 301


def test_claim_leaves_the_skipped_pools_to_their_warm_workers(db: Database) -> None:
    kept, left = new_call(db), new_call(db, memory="1Gi")  # another spec: another pool
    session = db.session("test")
    try:
        [row] = session.execute("SELECT pool FROM podfn_calls WHERE id = %s", (left,))
    finally:
        session.close()
    pool = row["pool"]
    rows = db.all("claim_queued", {"limit": 5, **UNARMED, "skip_pools": [pool]})
    assert [r["id"] for r in rows] == [kept]
    assert [r["id"] for r in db.all("claim_queued", {"limit": 5, **UNARMED})] == [left]
