"""podfn_runtime_v1.next_standing (migration 0009): what a standing worker's secret can claim.

Played as the runtime does it: the runtime role and the worker's secret, minted
the way the controller mints it. Every refusal here is one a hostile call
inside a standing worker, or a stale worker, could try.
"""

from __future__ import annotations

import hashlib
import pickle
import secrets
import sys
import threading
import time
from typing import Any

import cloudpickle
from psycopg.conninfo import make_conninfo

from attempts import Runtime
from podfn.settings import Settings
from podfn_platform.controller.environment import Credentials
from podfn_platform.controller.launcher import Attempt, Exit
from podfn_platform.controller.loop import Controller
from podfn_platform.database import Database, jsonb
from podfn_platform.roles import Roles
from podfn_platform.submission import NewCalls, record_calls, store_payload
from podfn_runtime.database import RuntimeDatabase

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}.0"
SPEC = {"max_calls_per_worker": None, "idle_timeout": 5, "min_workers": 1}


def deploy(db: Database, name: str, fn: object, spec: dict[str, Any] | None = None) -> int:
    """A new live version of `name`, as POST /v1/functions stores it."""
    with db.transaction() as tx:
        row = tx.one("insert_function_version", {
            "name": name, "function_digest": store_payload(tx, cloudpickle.dumps(fn)),
            "spec": jsonb(spec or SPEC), "client_python": PYTHON,
            "client_cloudpickle": cloudpickle.__version__, "deployed_by": "root"})
        assert row is not None
        tx.all("set_live_version", {"name": name, "version": row["version"]})
        return int(row["version"])


def invoke(db: Database, name: str, *, owner: str, n: int = 1, json: bool = True,
           by_deployer: bool = False) -> list[str]:
    """Calls of the live version: HTTP invokes (JSON), or Python submits (pickled args)."""
    live = db.one("get_function", {"name": name})
    assert live is not None
    with db.transaction() as tx:
        calls = NewCalls(name, live["function_digest"], live["spec"], live["client_python"],
                         live["client_cloudpickle"], owner=owner,
                         function_version=live["version"],
                         result_format="json" if json else "pickle",
                         by_deployer=by_deployer)
        return record_calls(tx, calls, [pickle.dumps(([i], {}), protocol=4) for i in range(n)])


def start_worker(db: Database, name: str, version: int) -> tuple[str, str]:
    """What the controller does before launching a standing worker: its name and secret."""
    worker = "standing-" + secrets.token_hex(8)
    minted = Credentials.mint()
    assert db.one("insert_standing_worker", {"worker": worker, "name": name, "version": version,
                                             "secret_hash": minted.secret_hash}) is not None
    return worker, minted.secret


def ask(url: str, worker: str, secret: str) -> tuple[dict[str, Any], str]:
    fresh = secrets.token_hex(32)
    rdb = RuntimeDatabase(url, secret)
    try:
        row = rdb.transition("next_standing", worker=worker, worker_secret=secret,
                             secret_hash=hashlib.sha256(fresh.encode()).hexdigest())
    finally:
        rdb.close()
    assert row is not None
    return row, fresh


def finish(rt: Runtime, call_id: str, attempt: int, secret: str) -> None:
    assert rt.call("succeed", call_id, attempt, secret=secret, result=None, result_json="1",
                   stdout="", stderr="") is not None


def test_a_standing_worker_serves_every_invoker_of_its_version_one_call_at_a_time(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    version = deploy(db, "f", abs)
    worker, secret = start_worker(db, "f", version)
    assert ask(runtime_database_url, worker, secret)[0]["verdict"] == "empty"
    [alice] = invoke(db, "f", owner="alice")
    [bob] = invoke(db, "f", owner="bob")
    row, fresh = ask(runtime_database_url, worker, secret)
    assert (row["verdict"], row["id"], row["attempt"]) == ("claimed", alice, 1)
    assert pickle.loads(row["args"]) == ([0], {})
    # One call at a time: the same secret asking again (a second holder) gets nothing.
    assert ask(runtime_database_url, worker, secret)[0]["verdict"] == "refused"
    # The call answers to its own attempt's secret, not the worker's.
    assert rt.call("succeed", alice, 1, secret=secret, result=None, result_json="1",
                   stdout="", stderr="") is None
    finish(rt, alice, 1, fresh)
    row, fresh = ask(runtime_database_url, worker, secret)
    assert (row["verdict"], row["id"]) == ("claimed", bob)
    finish(rt, bob, 1, fresh)
    # The call's own secret (which its code can read) claims nothing through `next`.
    [carol] = invoke(db, "f", owner="carol")
    assert rt.call("next", bob, 1, secret=fresh,
                   secret_hash=hashlib.sha256(b"x").hexdigest())["verdict"] == "refused"
    assert ask(runtime_database_url, worker, secret)[0]["id"] == carol
    workers = db.all("worker_attempts", {"workers": [worker], "ids": [None], "attempts": [None]})
    assert [(w["id"], w["busy"]) for w in workers] == [(carol, True)]


def test_a_standing_worker_cannot_claim_another_pools_call(
        db: Database, runtime_database_url: str) -> None:
    version = deploy(db, "f", abs)
    deploy(db, "g", abs)  # the same code under another name: another pool
    worker, secret = start_worker(db, "f", version)
    pickled = invoke(db, "f", owner="mallory", json=False)  # the caller's pickle: its own pool
    other = invoke(db, "g", owner="alice")
    with db.transaction() as tx:  # a plain submit of the same payload and spec
        plain = record_calls(tx, NewCalls("f", store_payload(tx, cloudpickle.dumps(abs)), SPEC,
                                          PYTHON, cloudpickle.__version__, owner=None),
                             [cloudpickle.dumps(((1,), {}))])
    assert ask(runtime_database_url, worker, secret)[0]["verdict"] == "empty"
    states = {r["id"]: r["state"] for r in db.all("call_states",
                                                   {"ids": pickled + other + plain})}
    assert set(states.values()) == {"queued"}
    # The deployer's own pickled call is the deployer's code: it may share the pool.
    [own] = invoke(db, "f", owner="root", json=False, by_deployer=True)
    assert ask(runtime_database_url, worker, secret)[0]["id"] == own


def test_wrong_retired_and_forgotten_secrets_claim_nothing(
        db: Database, runtime_database_url: str) -> None:
    version = deploy(db, "f", abs)
    worker, secret = start_worker(db, "f", version)
    other, other_secret = start_worker(db, "f", version)
    invoke(db, "f", owner="alice")
    assert ask(runtime_database_url, worker, other_secret)[0]["verdict"] == "refused"
    assert ask(runtime_database_url, worker, "guess")[0]["verdict"] == "refused"
    # min_workers is 1: the newer of the two is retired; a new version retires the other.
    assert [r["name"] for r in db.all("retire_standing_workers")] == [other]
    assert ask(runtime_database_url, other, other_secret)[0]["verdict"] == "retired"
    deploy(db, "f", abs, {**SPEC, "idle_timeout": 6})
    assert [r["name"] for r in db.all("retire_standing_workers")] == [worker]
    assert ask(runtime_database_url, worker, secret)[0]["verdict"] == "retired"
    # Once its process is gone the row goes, and the secret matches nothing at all.
    db.all("forget_gone_workers", {"workers": [other]})
    assert ask(runtime_database_url, worker, secret)[0]["verdict"] == "refused"


def test_a_standing_worker_honours_its_budget_and_yields_to_older_calls(
        db: Database, runtime_database_url: str) -> None:
    rt = Runtime(db, runtime_database_url)
    version = deploy(db, "f", abs, {**SPEC, "max_calls_per_worker": 1})
    worker, secret = start_worker(db, "f", version)
    [first, _] = invoke(db, "f", owner="alice", n=2)
    row, fresh = ask(runtime_database_url, worker, secret)
    assert row["id"] == first
    finish(rt, first, 1, fresh)
    assert ask(runtime_database_url, worker, secret)[0]["verdict"] == "done"
    fresh_version = deploy(db, "g", abs)
    idle, idle_secret = start_worker(db, "g", fresh_version)
    with db.connect(name="podfn-test") as conn:  # a call of another pool, waiting for 2 s
        conn.execute("UPDATE podfn_calls SET created_at = now() - interval '2 seconds' "
                     "WHERE state = 'queued'")
    assert ask(runtime_database_url, idle, idle_secret)[0]["verdict"] == "yield"


def test_the_platform_role_can_keep_standing_workers(database_url: str, db_roles: Roles) -> None:
    """The controller's standing-worker statements work as the platform role."""
    with Database(make_conninfo(database_url, user=db_roles.platform),
                  name="podfn-test-platform") as db:
        version = deploy(db, "f", abs, {**SPEC, "min_workers": 2})
        assert [(w["name"], w["missing"]) for w in db.all("standing_wanted")] == [("f", 2)]
        worker, _ = start_worker(db, "f", version)
        db.all("set_worker_ref", {"worker": worker, "ref": "pid:1"})
        assert [w["missing"] for w in db.all("standing_wanted")] == [1]
        [row] = db.all("worker_attempts", {"workers": [worker], "ids": [None],
                                           "attempts": [None]})
        assert not row["busy"] and not row["retired"] and row["pool"]
        assert db.all("retire_standing_workers") == []
        assert [r["name"] for r in db.all("forget_gone_workers", {"workers": []})] == [worker]


def test_a_standing_worker_that_cannot_start_backs_its_version_off() -> None:
    """Bad exits before any call space the replacements out; a clean exit or a worker
    that ran calls brings the next one at once."""
    controller = Controller(Settings(database_url="postgresql://unused"), None,  # type: ignore[arg-type]
                            None, threading.Event())  # type: ignore[arg-type]
    key = ("f", 1)

    def ended(kind: str, code: int | None, ran: bool = False) -> float | None:
        """The pause before the next replacement (None: at once, no backoff kept)."""
        name = f"standing-{secrets.token_hex(4)}"
        controller._standing[name] = key
        attempt = Attempt("call" if ran else name, 1 if ran else 0, "f", {}, "", worker=name)
        before = time.monotonic()
        controller._standing_ended(Exit(attempt, kind, "why", exit_code=code))
        after = time.monotonic()
        if key not in controller._standing_backoff:
            return None
        not_before = controller._standing_backoff[key][1]
        for pause in (0.0, 0.5, 1.0):
            if before + pause <= not_before <= after + pause:
                return pause
        raise AssertionError(f"unexpected pause {not_before - before}")

    assert ended("fatal", None) == 0.0
    assert ended("exited", -9) == 0.5
    assert ended("disrupted", 75) == 1.0
    assert ended("exited", 0) is None
    assert ended("fatal", None) == 0.0
    assert ended("fatal", None) == 0.5
    assert ended("exited", -9, ran=True) is None, "a worker that ran calls is not backed off"
