"""The runtime rides out database trouble: a lost connection is the platform's fault, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
import psycopg
import pytest
from test_runtime import submit

from attempts import UNARMED, arm
from podfn import remote
from podfn.errors import CallFailed
from podfn_platform.controller.environment import Credentials, runtime_environment
from podfn_platform.controller.launcher import Attempt
from podfn_platform.controller.local import LocalLauncher
from podfn_platform.database import Database
from podfn_runtime.database import DatabaseUnavailable, RuntimeDatabase
from podfn_runtime.main import EXIT_DISRUPTED


def _terminate_runtime_backends(database_url: str) -> int:
    """pg_terminate_backend on every runtime connection to this test's database; how many."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'podfn-runtime' AND datname = current_database()"
        ).fetchall()
    return len(rows)


def test_a_terminated_connection_mid_call_still_records_the_result(
        db: Database, database_url: str, runtime_database_url: str) -> None:
    def slow_square(x: int) -> int:  # local: pickled by value, as the client would
        time.sleep(1.5)
        return x * x

    call_id = submit(db, slow_square, 7)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    env = {**os.environ, "PODFN_RUNTIME_DATABASE_URL": runtime_database_url,
           "PODFN_ATTEMPT_SECRET": arm(db, call_id, 1).secret}
    runtime = subprocess.Popen([sys.executable, "-m", "podfn_runtime", "--call-id", call_id,
                                "--attempt", "1"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while (row := db.one("get_call", {"id": call_id})) and row["state"] != "running":
        assert time.monotonic() < deadline, "the runtime never claimed the call"
        time.sleep(0.02)
    assert _terminate_runtime_backends(database_url) == 1
    out, _ = runtime.communicate(timeout=60)
    assert runtime.returncode == 0, out
    [row] = db.all("finished_calls", {"ids": [call_id], "inline": 1 << 20, "budget": 1 << 20})
    assert row["state"] == "succeeded" and cloudpickle.loads(row["result"]) == 49


class _LoseReplies:
    """Fault injection: the named statement runs, then its connection drops before the reply."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, statement: str) -> None:
        self.statement = statement
        self.lost = 0
        original = psycopg.Connection.execute

        def execute(conn: psycopg.Connection[Any], query: Any, *args: Any, **kw: Any) -> Any:
            cursor = original(conn, query, *args, **kw)
            if self.lost == 0 and query == self.statement:
                self.lost += 1
                conn.close()
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return cursor

        monkeypatch.setattr(psycopg.Connection, "execute", execute)


@dataclass(frozen=True)
class Held:
    """A runtime's connection and the call whose attempt 1 it holds the secret of."""

    db: RuntimeDatabase
    call_id: str


@pytest.fixture
def held(db: Database, runtime_database_url: str) -> Iterator[Held]:
    """The runtime's connection for attempt 1 of a call the fixture queues (`pow(2, 5)`)."""
    call_id = submit(db, pow, 2, 5)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    rdb = RuntimeDatabase(runtime_database_url, arm(db, call_id, 1).secret, retry_seconds=10)
    yield Held(rdb, call_id)
    rdb.close()


def test_a_lost_reply_to_claim_is_not_mistaken_for_a_stale_attempt(
        db: Database, held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime_db, call_id = held.db, held.call_id
    faults = _LoseReplies(monkeypatch, runtime_db._queries["claim"])
    claimed = runtime_db.transition("claim", id=call_id, attempt=1)
    assert faults.lost == 1
    assert claimed is not None and claimed["id"] == call_id and claimed["function"]


def test_a_lost_reply_to_succeed_is_accepted_not_failed(
        db: Database, held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime_db, call_id = held.db, held.call_id
    assert runtime_db.transition("claim", id=call_id, attempt=1) is not None
    faults = _LoseReplies(monkeypatch, runtime_db._queries["succeed"])
    row = runtime_db.transition("succeed", id=call_id, attempt=1, result=b"r", result_json=None,
                                stdout="", stderr="")
    assert faults.lost == 1
    assert row is not None and row["state"] == "succeeded"
    [final] = db.all("finished_calls", {"ids": [call_id], "inline": 1 << 20, "budget": 1 << 20})
    assert final["state"] == "succeeded" and final["result"] == b"r"


def test_a_retried_write_from_a_stale_attempt_stays_stale(
        db: Database, held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    """The re-read after a lost reply accepts only this attempt's own write."""
    runtime_db, call_id = held.db, held.call_id
    assert runtime_db.transition("claim", id=call_id, attempt=1) is not None
    db.one("disrupt", {"id": call_id, "attempt": 1, "reason": "evicted", "exit_code": None,
                       "max_disruptions": 3})
    _LoseReplies(monkeypatch, runtime_db._queries["succeed"])
    assert runtime_db.transition("succeed", id=call_id, attempt=1, result=b"r",
                                 result_json=None, stdout="", stderr="") is None


def test_an_unreachable_database_gives_up_after_the_budget() -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match=r"unreachable for 0\.3 s"):
        RuntimeDatabase("postgresql://nobody@127.0.0.1:1/none", "secret", retry_seconds=0.3)
    assert time.monotonic() - started < 5


def test_exit_75_is_a_disruption_and_spends_no_user_retries(db: Database) -> None:
    """Runtimes that cannot reach the database are requeued by the platform, not charged."""
    call_id = submit(db, pow, 2, 5)
    [row] = db.all("claim_queued", {"limit": 1, **UNARMED})
    ended = threading.Event()
    launcher = LocalLauncher("postgresql://nobody@127.0.0.1:1/none", on_exit=ended.set,
                             write_retry_seconds=0.2)
    env = runtime_environment(call_id=call_id, attempt=1, credentials=Credentials.mint(),
                              api_url=None, spec={"retries": 3})
    try:
        launcher.launch(Attempt(call_id, 1, "f", {"retries": 3}, row["client_python"], env=env))
        assert ended.wait(60)
        [exit_] = launcher.exits()
    finally:
        launcher.close()
    assert exit_.kind == "disrupted" and exit_.exit_code == EXIT_DISRUPTED
    assert "could not reach the database" in exit_.reason


@remote(retries=2)
def _remote_square(x: int) -> int:
    return x * x


def test_on_the_platform_an_unreachable_database_is_charged_to_the_platform(
        platform: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt exits 75: the call fails on platform retries, user_failures stays 0."""
    platform.controller.launcher._database_url = "postgresql://nobody@127.0.0.1:1/none"
    platform.controller.launcher._env["PODFN_RUNTIME_WRITE_RETRY_SECONDS"] = "0.1"
    call = _remote_square.spawn(3)
    with pytest.raises(CallFailed) as info:
        call.result(timeout=120)
    assert "platform retries exhausted" in (info.value.reason or "")
    row = platform.db.one("get_call", {"id": call.id})
    assert row is not None and row["user_failures"] == 0
    assert row["disruptions"] == platform.settings.max_disruptions + 1
