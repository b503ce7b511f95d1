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
import math
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podfn_runtime import forked, termination
from podfn_runtime.capture import start_thread
from podfn_runtime.database import CONNECT_TIMEOUT, RuntimeDatabase
from podfn_runtime.main import (
    DEFAULT_MAX_RESULT_BYTES,
    EXIT_RECORDED,
    Failure,
    FunctionCache,
    Ran,
    log_recorded,
    record_failure,
    run_claimed,
    run_only,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("podfn.runtime")

# The longest an idle worker waits before asking Postgres again, NOTIFY or not.
POLL_SECONDS = 1.0
# Calls a warm worker claims at once (at most: `next_many` caps it at the worker's
# share of its pool's queue and at its `max_calls_per_worker`). It asks for twice
# what its last claim brought, from 2 up to PREFETCH: a worker serving one call
# at a time makes (and Postgres checks) two secrets per claim, not 32.
PREFETCH = 32
# How long the recorder waits for more outcomes before it writes what it has: a
# call's result reaches its caller up to this much later, and a warm map writes
# one statement for many calls instead of one per call.
LINGER_SECONDS = 0.005
# Results the recorder may hold before the worker waits for them to be written.
MAX_PENDING_BYTES = 16 << 20
# Variables of the first attempt that mean nothing for the next ones: its
# secret (spent) and its nested-call token (valid for that attempt only).
_FIRST_ATTEMPT_ONLY = ("PODFN_ATTEMPT_SECRET", "PODFN_TOKEN")


def is_warm(spec: dict[str, Any]) -> bool:
    """Whether this runtime may take more calls after the one it was started for."""
    return os.environ.get("PODFN_WARM") == "1" and spec.get("max_calls_per_worker", 1) != 1


# What a call submitted alone announces on podfn_queued, before its pool's name
# (submit_one in podfn_platform/sql/queries.sql; the controller reads it too).
FRESH_PREFIX = "fresh:"


class Waker:
    """Waits for a NOTIFY on podfn_queued (a call was queued or requeued), and for a
    standing worker on podfn_retired too (the controller retired a worker).

    A new call names its pool in the notification ('fresh:<pool>', submit_one); a
    worker told its own pool (`PODFN_POOL`, set by the controller) sleeps through
    another pool's: each idle warm or standing worker of every pool woke and sent a
    claim for every single call (benchmarks/notes.md, issue 12, eighth round). Any
    other notification (a map's batch, a requeue, a retry, a retirement) wakes it.
    """

    def __init__(self, url: str, channels: tuple[str, ...] = ("podfn_queued",),
                 pool: str | None = None) -> None:
        import psycopg  # (imported when needed: database._transient says why)

        self._conn: psycopg.Connection[Any] | None = None
        self._mine = FRESH_PREFIX + pool if pool else None
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
        """Until a notification that may concern this worker arrives or `seconds` pass."""
        if self._conn is None:
            time.sleep(seconds)
            return
        import psycopg

        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                woken = False
                # (The whole of what arrived together: what it announces is committed,
                # so the claim that follows a wake-up sees all of it.)
                for note in self._conn.notifies(timeout=left, stop_after=1):
                    woken = woken or not self._elsewhere(note.channel, note.payload)
                if woken:
                    return
        except psycopg.Error as exc:
            log.warning("lost the LISTEN connection (%s); polling every %g s", exc,
                        POLL_SECONDS)
            self.close()

    def _elsewhere(self, channel: str, payload: str) -> bool:
        """Whether the notification is another pool's new call."""
        return (self._mine is not None and channel == "podfn_queued"
                and payload.startswith(FRESH_PREFIX) and payload != self._mine)

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
    first = Held(claimed, os.environ.get("PODFN_ATTEMPT_SECRET", ""), started=True)
    recorder = Recorder(db)
    pipeline = _Pipeline(db, recorder, database_url, max_result_bytes)
    try:
        with termination.pending(recorder.drain):
            return pipeline.run(first)
    finally:
        try:
            recorder.close()
        finally:
            pipeline.close()


def stand(db: RuntimeDatabase, worker: str, worker_secret: str, database_url: str,
          max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> int:
    """A standing worker: ask for the pool's next call with the worker's own secret,
    run it, ask again; wait for a NOTIFY while the pool is empty."""
    waker = Waker(database_url, ("podfn_queued", "podfn_retired"),
                  os.environ.get("PODFN_POOL"))
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


@dataclass
class Held:
    """A call this worker claimed: its row, its attempt's secret, and whether its clock
    runs (the first call of a claim starts at once; the others are held until the
    worker starts them, and the start mark tells Postgres)."""

    row: dict[str, Any]
    secret: str
    started: bool


def _size(ran: Ran) -> int:
    outcome = ran.outcome
    if isinstance(outcome, Failure):
        return 0
    return len(outcome.pickled or b"") + len(outcome.json or "")


class Recorder:
    """Writes a warm worker's outcomes on a thread of its own, as many as have piled up
    per statement (`succeed_many`, migration 0012), while the worker runs its next
    call; marks the start of a call once it has run for LINGER_SECONDS (a shorter
    call needs no mark: its outcome dates its start); and claims the worker's next
    calls in the statement that records what is pending. The outcome of a call
    whose start Postgres knows is written before the worker goes on (`succeeded`),
    so the controller may charge a dead worker's exit to the call it sees started
    last whenever that call is unfinished.

    A claim goes out only after every outcome handed over before it. When nothing
    is pending, the worker writes its last outcome and claim itself (`finish`): no
    hand-over to this thread for a call at a time. An error of the thread (the
    database gone for the whole retry budget) is raised in the worker at its next
    call here."""

    def __init__(self, db: RuntimeDatabase) -> None:
        self._db = db
        self._cond = threading.Condition()
        self._running: Held | None = None  # the call running now, not yet marked
        self._running_since = 0.0
        self._done: list[tuple[Held, Ran]] = []
        self._done_since = 0.0
        self._pending_bytes = 0
        self._urgent = False  # write the outcomes pending now, without lingering
        self._claim: tuple[Held, list[str]] | None = None
        self._answer: list[dict[str, Any]] | None = None
        self._writing = False
        self._closing = False
        # When the thread, waiting, wakes by itself (inf: only when told; None: it is
        # not waiting, and looks at everything before it waits again).
        self._sleeping_until: float | None = None
        self._error: BaseException | None = None
        self._thread = start_thread(self._run, "podfn-recorder")

    def _wake_by(self, moment: float) -> None:
        """Under the lock: something is due at `moment`; wake the thread if it would
        sleep past it. (Waking it at every start and outcome of a map's short calls,
        to find nothing due for LINGER_SECONDS, cost as much CPU as the calls.)"""
        if self._sleeping_until is not None and moment < self._sleeping_until:
            self._cond.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def start(self, held: Held) -> None:
        """`held` starts now; if it runs for LINGER_SECONDS it gets a start mark, from
        which its `timeout` runs (a cancel then stops the worker too)."""
        with self._cond:
            self._raise()
            self._running, self._running_since = held, time.monotonic()
            self._wake_by(self._running_since + LINGER_SECONDS)

    def start_now(self, held: Held) -> None:
        """`start`, with the mark written (and every outcome before it) before this
        returns: for a call tried before, so that if it kills the worker again, at
        once, the exit is known to be its own (not one of the calls held with it)."""
        with self._cond:
            self._raise()
            self._running, self._running_since = held, time.monotonic() - LINGER_SECONDS
            self._cond.notify_all()
            while (self._running is held or self._done or self._writing) \
                    and self._error is None:
                self._cond.wait()
            self._raise()

    def succeeded(self, held: Held, ran: Ran) -> None:
        """Hand over `held`'s outcome. One whose start is in Postgres (a start mark,
        or the call the worker was launched for) is written before this returns: if
        the worker died in its next call with that outcome unwritten, the controller
        would charge the exit to this call, the last one it sees started."""
        with self._cond:
            self._raise()
            marked = self._running is not held
            if not marked:
                self._running = None
            if not self._done:
                self._done_since = time.monotonic()
            self._done.append((held, ran))
            self._pending_bytes += _size(ran)
            if marked:
                self._flush()
                return
            self._wake_by(self._done_since + LINGER_SECONDS if len(self._done) < PREFETCH
                          else -math.inf)
            while self._pending_bytes > MAX_PENDING_BYTES and self._error is None:
                self._cond.wait()
            self._raise()

    def _flush(self) -> None:
        """Under the lock: write what is pending now, and wait until it is written."""
        self._urgent = bool(self._done)  # (left set with nothing pending, it would
        # write the next short outcome alone)
        self._cond.notify_all()
        while (self._done or self._claim or self._writing) and self._error is None:
            self._cond.wait()
        self._raise()

    def ended(self, held: Held) -> None:
        """`held` ended and the worker records it itself (a failure): no mark."""
        with self._cond:
            if self._running is held:
                self._running = None

    def finish(self, held: Held, ran: Ran, chain: Held,
               secret_hashes: list[str]) -> list[dict[str, Any]]:
        """`succeeded`, then `claim`: in one statement, written by the caller itself
        when nothing else is pending."""
        with self._cond:
            self._raise()
            direct = not (self._done or self._writing or self._claim)
            if direct and self._running is held:
                self._running = None  # not marked: the outcome goes now
        if not direct:
            self.succeeded(held, ran)
            return self.claim(chain, secret_hashes)
        return self._write([], [(held, ran)], (chain, secret_hashes))

    def drain(self) -> None:
        """Until every outcome (and claim) handed over is written."""
        with self._cond:
            self._flush()

    def claim(self, chain: Held, secret_hashes: list[str]) -> list[dict[str, Any]]:
        """The next calls, claimed through `chain` (the first call of the worker's
        latest claim, which has ended) once every outcome before is written:
        `next_many`'s rows."""
        with self._cond:
            self._raise()
            idle = not (self._done or self._writing or self._claim)
        if idle:
            # Nothing to write first (an idle worker asking again): no hand-over to
            # the thread. Only this thread hands it work, so it stays idle meanwhile.
            return self._write([], [], (chain, secret_hashes))
        self.ask(chain, secret_hashes)
        return self.answer()

    def ask(self, chain: Held, secret_hashes: list[str]) -> None:
        """`claim`, without waiting for the answer (`answer`): the worker runs the
        calls it still holds meanwhile."""
        with self._cond:
            self._raise()
            self._claim, self._answer = (chain, secret_hashes), None
            self._cond.notify_all()

    def answered(self) -> bool:
        with self._cond:
            return self._answer is not None or self._error is not None

    def answer(self) -> list[dict[str, Any]]:
        with self._cond:
            while self._answer is None and self._error is None:
                self._cond.wait()
            self._raise()
            answer, self._answer = self._answer, None
            assert answer is not None
            return answer

    def close(self) -> None:
        """Write what is left, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _due(self, now: float) -> float | None:
        """Under the lock: 0 when there is something to write now, else how long
        until there is (None: nothing pending)."""
        waits = []
        if self._claim is not None or (self._closing and self._done):
            return 0.0
        if self._done:
            if len(self._done) >= PREFETCH or self._urgent:
                return 0.0
            waits.append(self._done_since + LINGER_SECONDS - now)
        if self._running is not None and not self._closing:
            waits.append(self._running_since + LINGER_SECONDS - now)
        if not waits:
            return None
        return max(0.0, min(waits))

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    due = self._due(now)
                    if due == 0.0:
                        break
                    if due is None and self._closing:
                        return
                    self._sleeping_until = math.inf if due is None else now + due
                    self._cond.wait(due)
                    self._sleeping_until = None
                now = time.monotonic()
                starts: list[Held] = []
                if self._running is not None and \
                        now >= self._running_since + LINGER_SECONDS and not self._closing:
                    starts, self._running = [self._running], None
                done, claim = self._done, self._claim
                self._done, self._claim, self._urgent = [], None, False
                self._writing = True
            answer: list[dict[str, Any]] | None = None
            error: BaseException | None = None
            try:
                answer = self._write(starts, done, claim)
            except BaseException as exc:  # raised in the worker (`_raise`)
                error = exc
            with self._cond:
                self._writing = False
                self._pending_bytes -= sum(_size(ran) for _, ran in done)
                if error is not None:
                    self._error = error
                elif claim is not None:
                    self._answer = answer or []
                self._cond.notify_all()
                if error is not None:
                    return

    def _write(self, starts: list[Held], done: list[tuple[Held, Ran]],
               claim: tuple[Held, list[str]] | None) -> list[dict[str, Any]]:
        if starts or done:
            rows = self._succeed_many(starts, done, claim)
            return [row for row in rows if row["kind"] == "next"]
        if claim is None:
            return []
        chain, secret_hashes = claim
        return self._db.rows("next_many", id=chain.row["id"], attempt=chain.row["attempt"],
                             secret=chain.secret, secret_hashes=secret_hashes)

    def _succeed_many(self, starts: list[Held], done: list[tuple[Held, Ran]],
                      claim: tuple[Held, list[str]] | None) -> list[dict[str, Any]]:
        outcomes = [ran.outcome for _, ran in done]
        chain = claim[0] if claim else None
        rows = self._db.rows(
            "succeed_many",
            ids=[held.row["id"] for held, _ in done],
            attempts=[held.row["attempt"] for held, _ in done],
            secrets=[held.secret for held, _ in done],
            results=[getattr(outcome, "pickled", None) for outcome in outcomes],
            results_json=[getattr(outcome, "json", None) for outcome in outcomes],
            stdouts=[ran.columns["stdout"] for _, ran in done],
            stderrs=[ran.columns["stderr"] for _, ran in done],
            peak_bytes=[ran.used.peak_bytes for _, ran in done],
            cpu_seconds=[ran.used.cpu_seconds for _, ran in done],
            wall_seconds=[ran.used.wall_seconds for _, ran in done],
            start_ids=[held.row["id"] for held in starts],
            start_attempts=[held.row["attempt"] for held in starts],
            start_secrets=[held.secret for held in starts],
            next_id=chain.row["id"] if chain else None,
            next_attempt=chain.row["attempt"] if chain else None,
            next_secret=chain.secret if chain else None,
            next_hashes=claim[1] if claim else None)
        recorded = {(row["id"], row["attempt"]) for row in rows if row["kind"] == "succeeded"}
        for held, _ in done:
            key = (held.row["id"], held.row["attempt"])
            if key not in recorded:
                log_recorded(*key, None)
        return rows


class _Pipeline:
    """A warm worker's loop: claim up to PREFETCH calls at once, run them one after
    another, hand each outcome to the recorder, and claim again when none is left."""

    def __init__(self, db: RuntimeDatabase, recorder: Recorder, database_url: str,
                 max_result_bytes: int) -> None:
        self._db = db
        self._recorder = recorder
        self._database_url = database_url
        self._max_result_bytes = max_result_bytes
        self._functions = FunctionCache()
        self._waker: Waker | None = None
        # Read before any call runs: a call may change os.environ (fork_per_call aside).
        self._pool = os.environ.get("PODFN_POOL")

    def close(self) -> None:
        if self._waker is not None:
            self._waker.close()

    def run(self, first: Held) -> int:
        held: deque[Held] = deque([first])
        idle_timeout = float(first.row["spec"].get("idle_timeout") or 60.0)
        idle_since = time.monotonic()
        chain, batch = first, 1  # the first call of the latest claim hands on
        asked: list[tuple[str, str]] | None = None  # secrets of a claim under way
        stop: str | None = None  # a verdict that ends the worker once `held` is run
        ready: tuple[list[dict[str, Any]], list[tuple[str, str]]] | None = None
        want = 2  # secrets per claim (PREFETCH at most)
        while True:
            if not held:
                if ready is not None:
                    (rows, fresh), ready = ready, None
                elif asked is not None:
                    rows, fresh, asked = self._recorder.answer(), asked, None
                elif stop is not None:
                    log.info("warm worker exits: %s", _WHY.get(stop, stop))
                    return EXIT_RECORDED
                else:
                    fresh = [_fresh_secret() for _ in range(want)]
                    rows = self._recorder.claim(chain, [h for _, h in fresh])
                verdict = self._take(rows, fresh, held)
                if verdict == "claimed":
                    chain, batch = held[0], len(held)
                    want = min(PREFETCH, max(2, 2 * batch))
                elif verdict == "empty":
                    remaining = idle_timeout - (time.monotonic() - idle_since)
                    if remaining <= 0:
                        log.info("warm worker exits: idle for %g s (the `idle_timeout` hint)",
                                 idle_timeout)
                        return EXIT_RECORDED
                    if self._waker is None:
                        # LISTEN from now on, then ask again at once: a call queued
                        # before the LISTEN took effect is not missed.
                        self._waker = Waker(self._database_url, pool=self._pool)
                        continue
                    self._waker.wait(min(remaining, POLL_SECONDS))
                    continue
                else:
                    log.info("warm worker exits: %s", _WHY.get(verdict, verdict))
                    return EXIT_RECORDED
            current = held.popleft()
            ran = self._run_one(current, first=current is first)
            idle_since = time.monotonic()
            if ran is not None:
                if not held and asked is None and stop is None:
                    # The last call held: its outcome and the next claim in one
                    # statement (the claim's answer is taken above).
                    fresh = [_fresh_secret() for _ in range(want)]
                    ready = (self._recorder.finish(current, ran, chain,
                                                   [h for _, h in fresh]), fresh)
                else:
                    self._recorder.succeeded(current, ran)
            if asked is None and stop is None and held and len(held) <= batch // 2:
                # Half of the claim is run: ask for the next calls now, so that they
                # are here when these are done (the claim's first call, whose secret
                # hands on, has ended).
                asked = [_fresh_secret() for _ in range(want)]
                self._recorder.ask(chain, [h for _, h in asked])
            elif asked is not None and held and self._recorder.answered():
                rows, fresh, asked = self._recorder.answer(), asked, None
                before = len(held)
                verdict = self._take(rows, fresh, held)
                if verdict == "claimed":
                    chain, batch = held[before], len(held) - before
                    want = min(PREFETCH, max(2, 2 * batch))
                elif verdict != "empty":
                    stop = verdict  # run what is held, then exit

    @staticmethod
    def _take(rows: list[dict[str, Any]], fresh: list[tuple[str, str]],
              held: deque[Held]) -> str:
        """The verdict of a claim; the calls it claimed go to the end of `held`."""
        verdict = str(rows[0]["verdict"]) if rows else "refused"
        if verdict == "claimed":
            payload = rows[0]["function"]
            for row in rows:
                if row["function"] is None:
                    row["function"] = payload  # one payload per pool: sent once
                held.append(Held(row, fresh[int(row["ordinal"]) - 1][0], started=False))
        return verdict

    def _run_one(self, current: Held, *, first: bool) -> Ran | None:
        """Run `current`; a success is returned for the caller to record, a failure is
        recorded here (after every outcome before it)."""
        if not current.started and current.row["attempt"] > 1:
            self._recorder.start_now(current)  # tried before: it may be what kills us
        elif not current.started:
            self._recorder.start(current)
        row = current.row
        self._db.use_secret(current.secret)  # output and items of this call
        os.environ["PODFN_CALL_ID"] = row["id"]
        os.environ["PODFN_ATTEMPT"] = str(row["attempt"])
        ran = run_only(self._db, row, self._max_result_bytes, self._functions,
                       fork=forked.wanted(row["spec"]))
        if first:
            for name in _FIRST_ATTEMPT_ONLY:
                os.environ.pop(name, None)
        if not isinstance(ran.outcome, Failure):
            return ran
        self._recorder.ended(current)
        self._recorder.drain()  # the outcomes before it first, in order
        log_recorded(row["id"], row["attempt"], record_failure(self._db, ran))
        return None


_WHY = {
    "retired": "the controller no longer wants it (a new version, fewer `min_workers`)",
    "done": "it ran its `max_calls_per_worker`",
    "yield": "a call of another pool has waited longer; its place goes to the controller",
    "refused": "Postgres no longer counts it as a live worker (its last attempt was "
               "stopped, or a lost reply)",
}
