"""A warm worker: the loop around `run_claimed` that lets one runtime run many calls.

A call whose spec allows more than one call per worker (`max_calls_per_worker`,
docs/warm-workers.md) is launched like any other. When it is recorded, the
runtime asks Postgres for the next queued call of its own pool (same function
payload, same spec, same owner) with `podfn_runtime_v1.next`, signed with the
secret of the attempt it just finished. It makes a fresh secret for the next
attempt and sends only its hash; the call's state moves queued -> running in
that one statement, so the same fencing holds as for a cold call: every write
of the new attempt is signed with the new secret, a stale one matches nothing.

With nothing queued, the worker waits for a NOTIFY on `podfn_queued` (a new
connection that LISTENs; LISTEN needs no privilege) and asks again at least
every POLL_SECONDS, so a database path that drops notifications (PgBouncer in
transaction pooling mode) still works, only slower. After `idle_timeout`
seconds without a call, or when Postgres says the worker has run its budget
or must give its place to another pool, it exits 0.

A *standing* worker (`min_workers` of a deployed function, `stand`) starts with
no call: the controller gave it a name and a secret of its own (PODFN_WORKER,
PODFN_WORKER_SECRET) and it asks `podfn_runtime_v1.next_standing` with them
for every call, each call still signed with a fresh per-attempt secret. It
ignores `idle_timeout`: it exits when Postgres says it is retired (the
controller no longer wants it), its budget is spent, it must yield, or its
secret is refused; the controller replaces it as needed.

The launcher only set PODFN_WARM=1 when the controller can follow a worker
from call to call (controller/loop.py); without it a runtime runs one call,
whatever the spec says.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from podfn_runtime.database import CONNECT_TIMEOUT, RuntimeDatabase
from podfn_runtime.main import (
    DEFAULT_MAX_RESULT_BYTES,
    EXIT_RECORDED,
    run_claimed,
    run_then_next,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("podfn.runtime")

# The longest an idle worker waits before asking Postgres again, NOTIFY or not.
POLL_SECONDS = 1.0
# Variables of the first attempt that mean nothing for the next ones: its
# secret (spent) and its nested-call token (valid for that attempt only).
_FIRST_ATTEMPT_ONLY = ("PODFN_ATTEMPT_SECRET", "PODFN_TOKEN")


def is_warm(spec: dict[str, Any]) -> bool:
    """Whether this runtime may take more calls after the one it was started for."""
    return os.environ.get("PODFN_WARM") == "1" and spec.get("max_calls_per_worker", 1) != 1


class Waker:
    """Waits for a NOTIFY on podfn_queued (a call was queued or requeued), and for a
    standing worker on podfn_retired too (the controller retired a worker)."""

    def __init__(self, url: str, channels: tuple[str, ...] = ("podfn_queued",)) -> None:
        import psycopg  # (imported when needed: database._transient says why)

        self._conn: psycopg.Connection[Any] | None = None
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                         application_name="podfn-runtime-listen")
            for channel in channels:
                self._conn.execute(f"LISTEN {channel}")
        except psycopg.Error as exc:
            log.warning("cannot LISTEN for new calls (%s); polling every %g s", exc,
                        POLL_SECONDS)
            self.close()

    def wait(self, seconds: float) -> None:
        """Until a notification arrives or `seconds` pass."""
        if self._conn is None:
            time.sleep(seconds)
            return
        import psycopg

        try:
            for _ in self._conn.notifies(timeout=seconds, stop_after=1):
                pass
        except psycopg.Error as exc:
            log.warning("lost the LISTEN connection (%s); polling every %g s", exc,
                        POLL_SECONDS)
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            import psycopg

            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def _fresh_secret() -> tuple[str, str]:
    """A secret for the worker's next attempt, and the hash Postgres keeps of it."""
    secret = secrets.token_hex(32)
    return secret, hashlib.sha256(secret.encode()).hexdigest()


def serve(db: RuntimeDatabase, call_id: str, attempt: int, database_url: str,
          max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> int:
    """Run the attempt this runtime was started for, then, when warm, the pool's next ones."""
    claimed = db.transition("claim", id=call_id, attempt=attempt)
    if claimed is None:
        log.info("stale attempt: call %s is no longer at attempt %d (or its secret is not "
                 "this attempt's); exiting", call_id, attempt)
        return EXIT_RECORDED
    if not is_warm(claimed["spec"]):
        return run_claimed(db, claimed, max_result_bytes)
    secret, secret_hash = _fresh_secret()
    code, answer = run_then_next(db, claimed, max_result_bytes, secret_hash)
    if code != EXIT_RECORDED:
        return code
    for name in _FIRST_ATTEMPT_ONLY:
        os.environ.pop(name, None)
    waker = Waker(database_url)
    try:
        return _loop(db, claimed, waker, max_result_bytes, answer, secret)
    finally:
        waker.close()


def stand(db: RuntimeDatabase, worker: str, worker_secret: str, database_url: str,
          max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> int:
    """A standing worker: ask for the pool's next call with the worker's own secret,
    run it, ask again; wait for a NOTIFY while the pool is empty."""
    waker = Waker(database_url, ("podfn_queued", "podfn_retired"))
    try:
        while True:
            secret = secrets.token_hex(32)
            row = db.transition("next_standing", worker=worker, worker_secret=worker_secret,
                                secret_hash=hashlib.sha256(secret.encode()).hexdigest())
            verdict = row["verdict"] if row else "refused"
            if verdict == "claimed":
                assert row is not None
                db.use_secret(secret)
                os.environ["PODFN_CALL_ID"] = row["id"]
                os.environ["PODFN_ATTEMPT"] = str(row["attempt"])
                code = run_claimed(db, row, max_result_bytes)
                if code != EXIT_RECORDED:
                    return code
                continue
            if verdict != "empty":
                log.info("standing worker %s exits: %s", worker, _WHY.get(verdict, verdict))
                return EXIT_RECORDED
            waker.wait(POLL_SECONDS)
    finally:
        waker.close()


def _loop(db: RuntimeDatabase, last: dict[str, Any], waker: Waker, max_result_bytes: int,
          answer: dict[str, Any] | None, secret: str) -> int:
    """`answer` is what `next` said after the last call (None: not asked yet), for `secret`."""
    idle_timeout = float(last["spec"].get("idle_timeout") or 60.0)
    idle_since = time.monotonic()
    while True:
        if answer is None:
            secret, secret_hash = _fresh_secret()
            answer = db.transition("next", id=last["id"], attempt=last["attempt"],
                                   secret_hash=secret_hash)
            if answer is None:
                answer = {"verdict": "refused"}
        verdict = answer["verdict"]
        if verdict == "claimed":
            row, answer = answer, None
            db.use_secret(secret)
            os.environ["PODFN_CALL_ID"] = row["id"]
            os.environ["PODFN_ATTEMPT"] = str(row["attempt"])
            secret, secret_hash = _fresh_secret()
            code, answer = run_then_next(db, row, max_result_bytes, secret_hash)
            if code != EXIT_RECORDED:
                return code
            last = row
            idle_since = time.monotonic()
            continue
        if verdict != "empty":
            log.info("warm worker exits: %s", _WHY.get(verdict, verdict))
            return EXIT_RECORDED
        answer = None
        remaining = idle_timeout - (time.monotonic() - idle_since)
        if remaining <= 0:
            log.info("warm worker exits: idle for %g s (the `idle_timeout` hint)", idle_timeout)
            return EXIT_RECORDED
        waker.wait(min(remaining, POLL_SECONDS))


_WHY = {
    "retired": "the controller no longer wants it (a new version, fewer `min_workers`)",
    "done": "it ran its `max_calls_per_worker`",
    "yield": "a call of another pool has waited longer; its place goes to the controller",
    "refused": "Postgres no longer counts it as a live worker (its last attempt was "
               "stopped, or a lost reply)",
}
