"""The runtime process on its own: claiming, fencing, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cloudpickle

from attempts import UNARMED, Runtime, arm
from podfn_platform.database import Database
from podfn_platform.submission import NewCalls, record_calls, store_payload
from podfn_runtime.main import EXIT_DISRUPTED


def submit(db: Database, fn: object, *args: object) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}.0"
    with db.transaction() as tx:
        calls = NewCalls("f", store_payload(tx, cloudpickle.dumps(fn)), {}, python,
                         cloudpickle.__version__)
        [call_id] = record_calls(tx, calls, [cloudpickle.dumps((args, {}))])
    return call_id


def run_runtime(database_url: str, call_id: str, attempt: int,
                secret: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PODFN_RUNTIME_DATABASE_URL": database_url,
           "PODFN_ATTEMPT_SECRET": secret}
    return subprocess.run([sys.executable, "-m", "podfn_runtime", "--call-id", call_id,
                           "--attempt", str(attempt)], env=env, capture_output=True, text=True,
                          timeout=60)


def test_runs_a_launched_attempt_and_records_the_result(db: Database,
                                                        runtime_database_url: str) -> None:
    call_id = submit(db, pow, 2, 10)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    done = run_runtime(runtime_database_url, call_id, 1, arm(db, call_id, 1).secret)
    assert done.returncode == 0, done.stderr
    [row] = db.all("finished_calls", {"ids": [call_id], "inline": 1 << 20, "budget": 1 << 20})
    assert row["state"] == "succeeded" and cloudpickle.loads(row["result"]) == 1024


def test_a_stale_attempt_exits_zero_and_writes_nothing(db: Database,
                                                       runtime_database_url: str) -> None:
    call_id = submit(db, pow, 2, 3)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    secret = arm(db, call_id, 1).secret
    db.one("disrupt", {"id": call_id, "attempt": 1, "reason": "node lost", "exit_code": None,
                       "max_disruptions": 3})
    db.all("claim_queued", {"limit": 1, **UNARMED})  # attempt 2 is current now
    late = run_runtime(runtime_database_url, call_id, 1, secret)
    assert late.returncode == 0
    assert "stale attempt" in late.stderr
    row = db.one("get_call", {"id": call_id})
    assert row is not None and row["state"] == "launching" and row["attempt"] == 2


def test_a_late_write_from_an_older_attempt_is_ignored(db: Database,
                                                      runtime_database_url: str) -> None:
    """Attempt 1 claimed and running when attempt 2 took over: its result never lands."""
    runtime = Runtime(db, runtime_database_url)
    call_id = submit(db, pow, 3, 2)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    assert runtime.claim(call_id, 1) is not None
    db.one("disrupt", {"id": call_id, "attempt": 1, "reason": "evicted", "exit_code": None,
                       "max_disruptions": 3})
    db.all("claim_queued", {"limit": 1, **UNARMED})
    assert run_runtime(runtime_database_url, call_id, 2, arm(db, call_id, 2).secret).returncode == 0
    assert runtime.succeed(call_id, 1, b"stale") is None
    [row] = db.all("finished_calls", {"ids": [call_id], "inline": 1 << 20, "budget": 1 << 20})
    assert cloudpickle.loads(row["result"]) == 9


def test_no_database_for_the_whole_retry_budget_exits_75() -> None:
    env = {**os.environ, "PODFN_RUNTIME_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
           "PODFN_ATTEMPT_SECRET": "secret", "PODFN_RUNTIME_WRITE_RETRY_SECONDS": "0.5"}
    done = subprocess.run([sys.executable, "-m", "podfn_runtime", "--call-id", "x", "--attempt",
                           "1"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_DISRUPTED == 75
    assert "unreachable for 0.5 s" in done.stderr


def test_missing_arguments_are_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODFN_")}
    done = subprocess.run([sys.executable, "-m", "podfn_runtime"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--call-id" in done.stderr


def test_max_result_bytes_on_the_command_line_fails_a_larger_result(
        db: Database, runtime_database_url: str) -> None:
    call_id = submit(db, bytes, 5000)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    env = {**os.environ, "PODFN_RUNTIME_DATABASE_URL": runtime_database_url,
           "PODFN_ATTEMPT_SECRET": arm(db, call_id, 1).secret}
    done = subprocess.run([sys.executable, "-m", "podfn_runtime", "--call-id", call_id,
                           "--attempt", "1", "--max-result-bytes", "1000"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    row = db.one("get_call", {"id": call_id})
    assert row is not None and row["state"] == "failed"
    assert "more than the platform's limit of 1000 bytes" in row["reason"]
    assert row["error_type"] == "ResultTooLarge" and row["user_failures"] == 0


def test_a_payload_that_does_not_match_its_digest_is_never_loaded(
        db: Database, runtime_database_url: str, tmp_path: Path) -> None:
    """Were a payload row ever altered, the runtime would refuse it rather than run it."""
    evidence = tmp_path / "ran"
    python = f"{sys.version_info.major}.{sys.version_info.minor}.0"
    forged = cloudpickle.dumps(lambda: evidence.write_text("ran"))
    with db.transaction() as tx:
        tx._conn.execute("INSERT INTO podfn_payloads (digest, data) VALUES (%s, %s)",
                         ("0" * 64, forged))
        [call_id] = record_calls(tx, NewCalls("f", "0" * 64, {}, python, cloudpickle.__version__),
                                 [cloudpickle.dumps(((), {}))])
    db.all("claim_queued", {"limit": 1, **UNARMED})
    done = run_runtime(runtime_database_url, call_id, 1, arm(db, call_id, 1).secret)
    assert done.returncode == 0, done.stderr
    row = db.one("get_call", {"id": call_id})
    assert row is not None and row["state"] == "failed"
    assert "does not match its digest" in row["reason"]
    assert not evidence.exists()
