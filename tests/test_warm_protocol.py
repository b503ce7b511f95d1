"""podfn_runtime_v1.next (migration 0008): what a warm worker's secret can and cannot claim.

Played as the runtime does it: the runtime role, the attempt's secret. Every
refusal here is one a hostile call inside a warm worker could try.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from typing import Any

import cloudpickle

from attempts import UNARMED, Runtime
from podfn_platform.database import Database
from podfn_platform.submission import NewCalls, record_calls, store_payload

WARM = {"max_calls_per_worker": None, "idle_timeout": 5}


def submit(db: Database, fn: object, *, spec: dict[str, Any] | None = None,
           owner: str | None = None, n: int = 1) -> list[str]:
    python = f"{sys.version_info.major}.{sys.version_info.minor}.0"
    with db.transaction() as tx:
        calls = NewCalls("f", store_payload(tx, cloudpickle.dumps(fn)), dict(WARM) if spec is None else spec,
                         python, cloudpickle.__version__, owner=owner)
        return record_calls(tx, calls, [cloudpickle.dumps(((i,), {})) for i in range(n)])


def ran_once(db: Database, rt: Runtime, call_id: str) -> None:
    """What a worker's first call goes through: launched by the controller, run, recorded."""
    [row] = db.all("claim_queued", {"limit": 1, **UNARMED})
    assert row["id"] == call_id
    assert rt.claim(call_id, 1) is not None
    assert rt.succeed(call_id, 1) is not None


def next_call(rt: Runtime, call_id: str, attempt: int,
              secret: str | None = None) -> tuple[dict[str, Any] | None, str]:
    fresh = secrets.token_hex(32)
    row = rt.call("next", call_id, attempt, secret=secret,
                  secret_hash=hashlib.sha256(fresh.encode()).hexdigest())
    return row, fresh


def test_a_worker_claims_the_next_call_of_its_pool_with_a_fresh_secret(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, second = submit(db, abs, n=2)
    ran_once(db, rt, first)
    row, fresh = next_call(rt, first, 1)
    assert row is not None and row["verdict"] == "claimed"
    assert (row["id"], row["attempt"]) == (second, 1)
    assert cloudpickle.loads(row["args"]) == ((1,), {})
    # The new attempt answers to the new secret only; the old one is spent.
    assert rt.call("succeed", second, 1, secret=fresh, result=b"x", result_json=None,
                   stdout="", stderr="") is not None
    again, _ = next_call(rt, first, 1)
    assert again is not None and again["verdict"] == "refused", "a secret hands on only once"
    with db.connect(name="podfn-test") as conn:
        workers = conn.execute("SELECT call_id, worker FROM podfn_attempts "
                               "WHERE call_id = ANY(%s)", ([first, second],)).fetchall()
    assert {w["call_id"]: w["worker"] for w in workers} == {first: None, second: f"{first}/1"}


def test_a_secret_never_claims_another_pool_or_another_owners_call(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    [mine] = submit(db, abs, owner="alice")
    submit(db, abs, owner="bob")                       # same function, other tenant
    submit(db, round, owner="alice")                   # other function
    submit(db, abs, owner="alice", spec={**WARM, "memory": "64Mi"})  # other spec
    ran_once(db, rt, mine)
    row, _ = next_call(rt, mine, 1)
    assert row is not None and row["verdict"] == "empty"
    assert len(db.all("claim_queued", {"limit": 10, **UNARMED})) == 3, "the other calls stay queued"


def test_a_wrong_live_or_stopped_secret_is_refused(db: Database,
                                                    runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, _second = submit(db, abs, n=2)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    assert rt.claim(first, 1) is not None
    row, _ = next_call(rt, first, 1)
    assert row is not None and row["verdict"] == "refused", "a running attempt claims nothing"
    row, _ = next_call(rt, first, 1, secret="not-the-secret")
    assert row is not None and row["verdict"] == "refused"
    # The controller gave up on the attempt (a disruption): its worker is not live.
    db.one("disrupt", {"id": first, "attempt": 1, "reason": "gone", "exit_code": None,
                       "max_disruptions": 5})
    row, _ = next_call(rt, first, 1)
    assert row is not None and row["verdict"] == "refused"


def test_the_call_budget_is_kept_by_postgres(db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, second, _third = submit(db, abs, n=3, spec={**WARM, "max_calls_per_worker": 2})
    ran_once(db, rt, first)
    row, fresh = next_call(rt, first, 1)
    assert row is not None and row["verdict"] == "claimed" and row["id"] == second
    assert rt.call("succeed", second, 1, secret=fresh, result=b"x", result_json=None,
                   stdout="", stderr="") is not None
    row, _ = next_call(rt, second, 1, secret=fresh)
    assert row is not None and row["verdict"] == "done"


def test_a_cold_call_is_never_taken_by_a_worker(db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    first, _second = submit(db, abs, n=2, spec={"retries": 0})
    ran_once(db, rt, first)
    row, _ = next_call(rt, first, 1)
    assert row is not None and row["verdict"] == "done"


def test_a_worker_yields_to_an_older_call_of_another_pool(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    [first] = submit(db, abs)
    ran_once(db, rt, first)
    [other] = submit(db, round)
    [mine] = submit(db, abs)
    with db.connect(name="podfn-test") as conn:
        conn.execute("UPDATE podfn_calls SET created_at = clock_timestamp() - interval '1 minute'"
                     " WHERE id = %s", (other,))
    row, _ = next_call(rt, first, 1)
    assert row is not None and row["verdict"] == "yield", "the older cold call goes first"
    with db.connect(name="podfn-test") as conn:
        conn.execute("UPDATE podfn_calls SET created_at = clock_timestamp() + interval '1 minute'"
                     " WHERE id = %s", (other,))
    row, _ = next_call(rt, first, 1)
    assert row is not None and row["verdict"] == "claimed" and row["id"] == mine
