"""The controller: claims queued calls, launches their attempts, reconciles outcomes.

It holds no state that matters outside Postgres. Each turn it (1) turns the
launcher's reports into guarded transitions, (2) stops attempts whose call
was cancelled or moved on, (3) claims queued calls up to its concurrency
limit and launches them. It sleeps until a NOTIFY (a call queued or
cancelled), an attempt ending, a deadline, or the periodic sweep.

A database error in a turn is never fatal: the turn is abandoned and tried
again after a backoff with jitter, attempts keep running, and exits not yet
recorded wait for the next turn. Only losing leadership (another controller
holds the lock) ends the loop. A row the controller cannot process (a spec
written by an older version, or corrupted) fails that call with a reason
naming the fault; every other call goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import threading
import time
from collections import Counter
from typing import Any

from podfn import spec as call_spec
from podfn.errors import DatabaseError, InvalidSpec
from podfn.settings import Settings
from podfn_platform.controller import environment, metrics
from podfn_platform.controller.launcher import Attempt, Exit, Launcher, worker_origin
from podfn_platform.controller.leader import LeaderLock, LeadershipLost
from podfn_platform.database import Database, Listener
from podfn_runtime.worker import FRESH_PREFIX

log = logging.getLogger("podfn.controller")

FINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled"})
# How long an attempt may outlive its call's recorded outcome before it is stopped.
FINISHED_GRACE_SECONDS = 5.0
# Retrying a turn after a database error: from BACKOFF_FIRST seconds, doubling
# up to BACKOFF_MAX, each wait drawn between half and all of that (jitter, so
# controllers and replicas do not hammer a recovering database in step).
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
# Standing workers (docs/warm-workers.md) are named STANDING_PREFIX + random hex;
# a worker started for a call is named "<call id>/<attempt>" instead.
STANDING_PREFIX = "standing-"
# Replacing a standing worker that ended badly before running any call: at once
# the first time, then after STANDING_BACKOFF_FIRST seconds doubling up to
# STANDING_BACKOFF_MAX, so a worker that cannot start (a bad image, a refused
# hint) does not spin.
STANDING_BACKOFF_FIRST = 0.5
STANDING_BACKOFF_MAX = 60.0
# The most calls one turn claims (and mints credentials for ahead of the claim).
MINT_AHEAD = 256
# How often, at most, a turn asks Postgres which running calls moved on
# (stop_moved_on) when nothing said one did: a cancel (NOTIFY podfn_cancelled)
# or a transition of the controller's own asks at once; this bounds how long
# an attempt that lingers past FINISHED_GRACE_SECONDS keeps its slot.
MOVED_ON_SECONDS = 1.0
# A call submitted alone announces its pool (`podfn_queued`, payload FRESH_PREFIX +
# pool; a requeue sends its id, a batch nothing). When that pool had a live warm
# worker at the last turn, the turn waits this long: the pool's workers LISTEN on
# the same channel and an idle one claims the call within milliseconds (and asks
# for a turn itself, `podfn_warm`, when it sees more queued than it took). The
# late turn grows a pool whose workers are all busy. A turn for every call a warm
# pool serves one at a time cost about as much CPU as the worker spent on the call
# (five statements, 2.5 ms against 2.2-3.6 ms: benchmarks/notes.md, issue 12, fifth
# round); a worker's start (a pod's second or more) dwarfs the wait. A stream of
# single calls still got a turn per grace, nearly always with nothing to do, so the
# late turn first asks whether a call of those pools is still queued (one statement,
# podfn_pools_queued) and is skipped when none is: the controller's CPU per such
# call 1.10-1.17 -> 0.75-0.80 ms (benchmarks/notes.md, ninth round).
WARM_QUEUED_GRACE = 0.05


def backoff_seconds(failures: int) -> float:
    """How long to wait after the `failures`-th database error in a row (1-based)."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 16))
    return random.uniform(ceiling / 2, ceiling)


def unprocessable(row: dict[str, Any]) -> str | None:
    """Why the controller cannot launch this claimed row, or None if it can."""
    try:
        call_spec.validate(row["spec"])  # any JSON: validate says what is wrong
    except InvalidSpec as exc:
        return (f"the call's stored spec cannot be run ({exc}); it was written by another "
                "podfn version or corrupted: submit the call again")
    for key in ("function_name", "client_python"):
        if not isinstance(row.get(key), str):
            return (f"the call's stored {key} is {row.get(key)!r}, not text; it was written by "
                    "another podfn version or corrupted: submit the call again")
    return None


def attempt_from(row: dict[str, Any]) -> Attempt:
    return Attempt(call_id=row["id"], attempt=row["attempt"],
                   function_name=row.get("function_name", ""), spec=row["spec"],
                   client_python=row.get("client_python", ""),
                   state=row.get("state", "launching"), launched_at=row.get("launched_at"))


class Controller:
    def __init__(self, settings: Settings, db: Database, launcher: Launcher,
                 wake: threading.Event) -> None:
        self.settings = settings
        self.db = db
        self.launcher = launcher
        self.wake = wake  # set by the listener and by the launcher when an attempt ends
        self.leader = LeaderLock(db)
        self.is_active = threading.Event()
        self.turns = 0  # completed turns, for tests and metrics
        self.database_errors = 0  # turns abandoned on a database error, for tests and logs
        self._unrecorded: list[Exit] = []  # exits taken from the launcher, not yet in Postgres
        self._full_reconcile = True  # after (re)start or a database error: check everything
        # Standing workers this controller started: name -> (function, version); and,
        # per function version, (bad exits in a row, monotonic time before which it
        # gets no replacement).
        self._standing: dict[str, tuple[str, int]] = {}
        self._standing_backoff: dict[tuple[str, int], tuple[int, float]] = {}
        # When keep_standing next looks at Postgres (monotonic): at once after a deploy,
        # an exit or a backoff's end, else once per sweep, so an idle turn costs nothing.
        self._standing_due_at = 0.0
        # Whether the last look at standing workers may have left some wanted for lack
        # of room (then an exit makes the next look due; see reconcile_exits).
        self._standing_short = True
        # Live warm workers per pool, as track_workers last saw them.
        self.pool_workers: Counter[str] = Counter()
        # The workers track_workers saw, for disrupt_orphans later in the same turn.
        self._orphan_check: list[str] | None = None
        # When stop_moved_on next asks Postgres (monotonic; 0: at the next turn).
        self._moved_on_due_at = 0.0
        # The workers disrupt_orphans last looked for, and when it looks again anyway
        # (monotonic): orphans appear only when a worker leaves the launcher.
        self._orphans_checked: frozenset[str] | None = None
        self._orphans_due_at = 0.0
        # The turn a call queued for a busy or idle warm pool asked for, not yet run, and
        # the pools whose calls it waits for.
        self._deferred_turn: threading.Timer | None = None
        self._deferred_pools: set[str] = set()
        self._deferred_lock = threading.Lock()
        # The earliest backoff's end among queued calls (epoch seconds), as last read,
        # and whether something may have changed it since.
        self._retry_at: float | None = None
        self._retry_at_stale = True
        self._retry_at_checked = 0.0

    # -- lifecycle ---------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Wait for leadership, then act until `stop` is set or leadership is lost."""
        while not stop.is_set() and not self.leader.try_acquire():
            log.info("not the active controller (another is, or the database cannot be "
                     "reached); standing by")
            stop.wait(min(self.settings.sweep_seconds, 2.0))
        if stop.is_set():
            return
        log.info("this controller is active")
        listener = Listener(self.db, ["podfn_queued", "podfn_cancelled", "podfn_warm",
                                      "podfn_deployed"],
                            on_notify=self._notified, on_reconnect=self._reconnected)
        listener.start()
        self.is_active.set()
        try:
            self.launcher.start()
            failures = 0
            while not stop.is_set():
                try:
                    self.leader.check()
                    self.wake.clear()
                    self._cancel_deferred_turn()  # this turn sees what it waited for
                    self.turn()
                    sleep = self._sleep_seconds()
                except LeadershipLost:
                    log.warning("leadership lost: another controller is active; stopping")
                    raise
                except DatabaseError as exc:
                    failures += 1
                    self.database_errors += 1
                    self._full_reconcile = True
                    self._moved_on_due_at = 0.0
                    self._retry_at_stale = True
                    metrics.DATABASE_ERRORS.inc()
                    sleep = backoff_seconds(failures)
                    log.warning("database error in a controller turn (%d in a row): %s; "
                                "attempts keep running, trying again in %.2fs", failures,
                                exc, sleep)
                    stop.wait(sleep)
                    continue
                failures = 0
                self.wake.wait(sleep)
        except LeadershipLost:
            pass
        finally:
            self.is_active.clear()
            listener.stop()
            self._cancel_deferred_turn()
            self.launcher.close()
            try:
                self.reconcile_exits()
            except DatabaseError as exc:
                log.warning("could not hand back attempts on shutdown: %s", exc)
            self.leader.release()

    def _notified(self, channel: str, payload: str) -> None:
        if channel == "podfn_deployed":
            self._standing_due_at = 0.0
        elif channel == "podfn_cancelled":
            self._moved_on_due_at = 0.0
        elif channel == "podfn_queued":
            if payload.startswith(FRESH_PREFIX):
                # (read from the listener's thread: a count being rebuilt reads as
                # no worker, and the turn comes at once)
                pool = payload[len(FRESH_PREFIX):]
                if self.pool_workers.get(pool):
                    self._defer_turn(pool)
                    return
            elif payload:
                # A requeue (its id): it may come with a backoff, which may be the next
                # due. A new call has none.
                self._retry_at_stale = True
        self.wake.set()

    def _defer_turn(self, pool: str) -> None:
        """A turn WARM_QUEUED_GRACE from now if a call of `pool` is still queued then,
        unless one is already asked for (which looks at this pool too)."""
        with self._deferred_lock:
            self._deferred_pools.add(pool)
            if self._deferred_turn is not None:
                return
            timer = self._deferred_turn = threading.Timer(WARM_QUEUED_GRACE, self._grace_over)
            timer.daemon = True
            try:
                timer.start()
            except RuntimeError:  # no thread to be had (a pids limit): a turn now
                self._deferred_turn = None
                self._deferred_pools.clear()
                self.wake.set()

    def _grace_over(self) -> None:
        """On the timer's thread: the deferred turn, if a call it waited for is still
        queued (no idle worker of its pool took it)."""
        with self._deferred_lock:
            if self._deferred_turn is not threading.current_thread():
                return  # a turn began meanwhile, and saw the calls
            self._deferred_turn = None
            pools, self._deferred_pools = sorted(self._deferred_pools), set()
        try:
            row = self.db.one("still_queued", {"pools": pools})
            queued = row is None or bool(row["queued"])
        except DatabaseError:
            queued = True  # the turn meets the error, and backs off
        if queued:
            self.wake.set()

    def _cancel_deferred_turn(self) -> None:
        with self._deferred_lock:
            timer, self._deferred_turn = self._deferred_turn, None
            self._deferred_pools.clear()
        if timer is not None:
            timer.cancel()

    def _reconnected(self) -> None:
        # A deploy's, a cancel's or a requeue's notification may have been lost.
        self._standing_due_at = self._moved_on_due_at = 0.0
        self._retry_at_stale = True
        self.wake.set()

    def _sleep_seconds(self) -> float:
        sleep = self.settings.sweep_seconds
        deadline = self.launcher.next_deadline()
        if deadline is not None:
            sleep = min(sleep, deadline)
        now = time.monotonic()
        # A time that has passed was a call's that is due now: once the turn it woke has
        # launched it, the next one is another's (without a look, every turn would be
        # 10 ms after the last until the sweep).
        passed = self._retry_at is not None and self._retry_at <= time.time()
        if self._retry_at_stale or passed or \
                now >= self._retry_at_checked + self.settings.sweep_seconds:
            # Only a requeue (notified), a transition of ours or a sweep changes it.
            self._retry_at_stale = False  # (before the query: a NOTIFY meanwhile counts)
            self._retry_at_checked = now
            row = self.db.one("next_retry_at")
            self._retry_at = row["at"].timestamp() if row and row["at"] is not None else None
        if self._retry_at is not None:
            sleep = min(sleep, max(0.0, self._retry_at - time.time()))
        if self._standing_due_at > 0.0:
            sleep = min(sleep, max(0.0, self._standing_due_at - time.monotonic()))
        return max(sleep, 0.01)

    # -- one turn ----------------------------------------------------------

    def turn(self) -> None:
        full = self._full_reconcile
        self.launcher.reconcile(self.unfinished, full=full)
        self._full_reconcile = self._full_reconcile and not full
        self.reconcile_exits()
        idle_pools = self.track_workers()
        # Launching first: a queued call waits for no other round trip of the turn.
        self.launch_queued(idle_pools)
        self.disrupt_orphans()
        self.stop_moved_on()
        self.keep_standing()
        self.turns += 1

    def unfinished(self) -> list[Attempt]:
        """Attempts Postgres says are in flight (launching or running)."""
        return [attempt_from(r) for r in self.db.all("unfinished_cold_attempts")]

    def reconcile_exits(self) -> None:
        """Record every exit; one that a database error interrupts waits for the next turn."""
        new = self.launcher.exits()
        self._unrecorded += new
        # A worker to replace or forget, or a slot freed that a standing worker wanted: a
        # look at the standing workers is due. A cold attempt's exit alone (most exits
        # of a map) changes nothing there, so it costs no look (three statements).
        if any(e.attempt.worker for e in new) or (new and self._standing_short):
            self._standing_due_at = 0.0
        while self._unrecorded:
            exit_ = self._unrecorded[0]
            self.record(exit_)
            self._unrecorded.pop(0)
            self.launcher.settle(exit_)
            self._standing_ended(exit_)

    def record(self, exit_: Exit) -> None:
        """Turn what happened to an attempt into (at most) one guarded transition."""
        if exit_.attempt.worker:
            current = self.worker_attempt(exit_.attempt)
            if current is None:
                return  # an idle warm worker ended: no call of ours was in it
            if exit_.kind == "timeout" and current.key != exit_.attempt.key:
                # The timed-out call ended by itself and the worker took the next one
                # before it was stopped: that one is lost with the worker, not timed out.
                exit_ = Exit(current, "disrupted", f"the warm worker {current.worker} was "
                             f"stopped at the timeout of call {exit_.attempt.call_id}")
            else:
                exit_ = dataclasses.replace(exit_, attempt=current)
        if exit_.recorded:
            metrics.RECONCILE_RESULTS.labels(exit_.kind, "unchanged").inc()
            return
        a = exit_.attempt
        params: dict[str, Any] = {"id": a.call_id, "attempt": a.attempt, "reason": exit_.reason,
                                  "exit_code": exit_.exit_code}
        if exit_.kind == "timeout":
            row = self.db.one("time_out", params)
        elif exit_.kind in ("stopped", "disrupted"):
            row = self.db.one("disrupt", {**params,
                                          "max_disruptions": self.settings.max_disruptions})
        elif exit_.kind == "deferred":
            row = self.db.one("defer", {"id": a.call_id, "attempt": a.attempt,
                                        "reason": exit_.reason, "delay": exit_.delay})
        else:
            row = self.db.one("fail", {**params, "retryable": exit_.kind == "exited",
                                       "error_type": None, "error_message": None,
                                       "error_traceback": None, "error_pickle": None,
                                       "stdout": None, "stderr": None})
        metrics.RECONCILE_RESULTS.labels(exit_.kind, row["state"] if row else "unchanged").inc()
        if row is not None:
            # A call of ours moved (requeued with a backoff, timed out...): both are due.
            self._retry_at_stale = True
            self._moved_on_due_at = 0.0
            log.info("call %s attempt %d -> %s: %s", a.call_id, a.attempt, row["state"],
                     exit_.reason.splitlines()[0])

    # -- warm workers (docs/warm-workers.md) --------------------------------

    @property
    def warm_pool_workers(self) -> int:
        """Warm workers the controller starts for one pool: the setting, else the
        launcher's default, else as many as `max_concurrency` allows."""
        if not self.follows_workers:
            return self.settings.max_concurrency  # no warm workers: no cap
        return (self.settings.warm_pool_workers
                or getattr(self.launcher, "warm_pool_workers", None)
                or self.settings.max_concurrency)

    @property
    def follows_workers(self) -> bool:
        """Whether the launcher can follow a warm worker from call to call."""
        return hasattr(self.launcher, "rebind") and hasattr(self.launcher, "workers")

    def worker_attempt(self, attempt: Attempt) -> Attempt | None:
        """The unfinished attempt the worker that `attempt` names runs now, if any."""
        origin_id, origin_attempt = worker_origin(attempt.worker)
        rows = self.db.all("worker_attempts", {"workers": [attempt.worker], "ids": [origin_id],
                                               "attempts": [origin_attempt]})
        if not rows or not rows[0]["busy"]:
            return None
        return dataclasses.replace(attempt_from({**rows[0], "state": rows[0]["call_state"]}),
                                   worker=attempt.worker)

    def track_workers(self) -> list[str]:
        """Point each warm worker at the attempt it runs now (for its timeout, its
        cancellation, its exit), and return the pools that have an idle worker (no
        cold launch for those this turn)."""
        self._orphan_check = None
        if not self.follows_workers:
            return []
        workers: dict[str, Attempt] = self.launcher.workers()  # type: ignore[attr-defined]
        idle: set[str] = set()
        self.pool_workers.clear()
        if workers:
            names = list(workers)
            origins = [worker_origin(n) for n in names]
            rows = self.db.all("worker_attempts", {
                "workers": names, "ids": [o[0] for o in origins],
                "attempts": [o[1] for o in origins]})
            for row in rows:
                if row["pool"] is not None and not row["retired"]:
                    self.pool_workers[row["pool"]] += 1
                # A call cancelled or timed out while the worker ran it is finished in
                # Postgres, but the worker still runs it: point at it so it is stopped.
                if row["busy"] or row["call_state"] in ("cancelled", "timed_out"):
                    current = dataclasses.replace(
                        attempt_from({**row, "state": row["call_state"]}), worker=row["worker"])
                    self.launcher.rebind(row["worker"], current,  # type: ignore[attr-defined]
                                         row["running_seconds"])
                else:
                    self.launcher.rebind(row["worker"], None, 0.0)  # type: ignore[attr-defined]
                    # A worker holding calls it has not started (prefetch) is not idle.
                    if row["pool"] is not None and not row["retired"] and not row["holding"]:
                        idle.add(row["pool"])
        if getattr(self.launcher, "workers_known", True):
            # (a restarted launcher may not have adopted them yet)
            self._orphan_check = list(workers)
        return sorted(idle)

    def disrupt_orphans(self) -> None:
        """Disrupt attempts whose warm worker is gone (of those track_workers saw this
        turn): checked after the turn's launches, which it does not affect.

        Only a worker that leaves the launcher leaves orphans (every claim is made
        by a live worker in its own name), so it asks Postgres when the workers
        changed since it last did, once more MOVED_ON_SECONDS after that (a pod
        stopping may still claim), and at every sweep in case a disruption was
        refused meanwhile (or a restart's adoption raced), not at every turn."""
        workers, self._orphan_check = self._orphan_check, None
        if workers is None:
            return
        now, seen = time.monotonic(), frozenset(workers)
        if seen == self._orphans_checked and now < self._orphans_due_at:
            return
        for row in self.db.all("orphaned_warm_attempts", {"workers": workers}):
            self.record(Exit(Attempt(row["id"], row["attempt"], "", {}, ""), "disrupted",
                             f"the warm worker {row['worker']} running the attempt is gone"))
        # (after: a database error above leaves the look due). A worker that just left
        # may still commit a claim (a pod in its grace period): one more look soon.
        changed = seen != self._orphans_checked
        self._orphans_checked = seen
        self._orphans_due_at = now + (MOVED_ON_SECONDS if changed else self.settings.sweep_seconds)

    def keep_standing(self) -> None:
        """Keep `min_workers` standing workers for each deployed function's live version.

        Run after the queued calls got their slots: a standing worker takes a
        slot of `PODFN_MAX_CONCURRENCY` like any worker, so standing workers
        only fill room no queued call wanted. Workers of a version that is no
        longer live (or beyond its `min_workers`) are retired: they finish the
        call they run, if any, and exit. One that died is replaced here, once
        its exit is recorded (its in-flight call, if any, went through `record`).
        """
        now = time.monotonic()
        if not self.follows_workers or now < self._standing_due_at:
            return
        if not getattr(self.launcher, "workers_known", True):
            return  # a restarted launcher has not adopted its pods yet: none is gone
        # Next look: after a sweep, unless an exit, a deploy or a backoff's end is sooner.
        self._standing_due_at = now + self.settings.sweep_seconds
        held = self.launcher.workers()  # type: ignore[attr-defined]
        metrics.STANDING_WORKERS.set(sum(name.startswith(STANDING_PREFIX) for name in held))
        self.db.all("forget_gone_workers", {"workers": list(held)})
        for row in self.db.all("retire_standing_workers"):
            log.info("retiring the standing worker %s (its version is no longer wanted)",
                     row["name"])
        room = self.settings.max_concurrency - len(self.launcher.active())
        # Until a look finds room for every standing worker wanted, each exit makes
        # the next look due (the slot it frees may be wanted).
        self._standing_short = True
        if room <= 0:
            return  # room only comes back with an exit, which makes the next look due
        for want in self.db.all("standing_wanted"):
            key = (want["name"], want["version"])
            not_before = self._standing_backoff.get(key, (0, 0.0))[1]
            if not_before > now:
                self._standing_due_at = min(self._standing_due_at, not_before)
                continue
            for _ in range(min(int(want["missing"]), room)):
                if not self.start_standing(want):
                    break
                room -= 1
            if room <= 0:
                return
        self._standing_short = False

    def start_standing(self, want: dict[str, Any]) -> bool:
        """Start one standing worker for the live version `want`; whether it was launched."""
        key = (want["name"], want["version"])
        name = STANDING_PREFIX + secrets.token_hex(8)
        problem = unprocessable({**want, "function_name": want["name"]})
        if problem is not None:
            log.error("no standing worker for %s version %d: %s", *key, problem)
            self._standing_failed(key)
            return False
        credentials = environment.Credentials.mint()
        inserted = self.db.one("insert_standing_worker", {
            "worker": name, "name": want["name"], "version": want["version"],
            "secret_hash": credentials.secret_hash})
        if inserted is None:
            return False  # another version went live meanwhile
        attempt = Attempt(call_id=name, attempt=0, function_name=want["name"],
                          spec=want["spec"], client_python=want["client_python"],
                          worker=name, env={**environment.standing_environment(
                              worker=name, credentials=credentials, spec=want["spec"]),
                              **environment.pool_variable(inserted["pool"])})
        self._standing[name] = key
        try:
            with metrics.LAUNCH_SECONDS.time():
                ref = self.launcher.launch(attempt)
        except Exception:
            metrics.LAUNCH_FAILURES.inc()
            log.exception("launching a standing worker of %s version %d failed", *key)
            self._standing.pop(name, None)
            self.db.all("delete_worker", {"worker": name})
            self._standing_failed(key)
            return False
        metrics.STANDING_STARTS.inc()
        log.info("started the standing worker %s of %s version %d (%s)", name, *key, ref)
        try:
            self.db.all("set_worker_ref", {"worker": name, "ref": ref})
        except DatabaseError as exc:  # the ref is for people
            log.warning("could not record the standing worker %s's ref %s: %s", name, ref, exc)
        return True

    def _standing_ended(self, exit_: Exit) -> None:
        """A standing worker's exit is recorded: it is replaced at once, unless it ended
        badly (not a clean exit, not stopped by us) before running any call, as a
        worker that cannot start does: then its version backs off."""
        key = self._standing.pop(exit_.attempt.worker, None)
        if key is None:
            return
        ran_calls = exit_.attempt.call_id != exit_.attempt.worker
        clean = exit_.kind == "stopped" or (exit_.kind == "exited" and exit_.exit_code == 0)
        if clean or ran_calls:
            self._standing_backoff.pop(key, None)
        else:
            log.info("the standing worker %s of %s version %d ended: %s", exit_.attempt.worker,
                     *key, exit_.reason.splitlines()[0])
            self._standing_failed(key)

    def _standing_failed(self, key: tuple[str, int]) -> None:
        failures = self._standing_backoff.get(key, (0, 0.0))[0] + 1
        delay = 0.0 if failures == 1 else min(
            STANDING_BACKOFF_FIRST * 2 ** min(failures - 2, 16), STANDING_BACKOFF_MAX)
        self._standing_backoff[key] = (failures, time.monotonic() + delay)

    def stop_moved_on(self) -> None:
        """Stop attempts whose call was cancelled, finished or moved to a newer attempt.

        A finished call's attempt normally ends by itself right after it
        recorded the outcome; one still running `FINISHED_GRACE_SECONDS` later
        (a sidecar container, a non-daemon thread in the user's code) would
        hold its slot of `max_concurrency` for ever, so it is stopped.
        """
        active = {a.call_id: a for a in self.launcher.active()}
        now = time.monotonic()
        if not active or now < self._moved_on_due_at:
            return
        self._moved_on_due_at = now + MOVED_ON_SECONDS
        for row in self.db.all("call_states", {"ids": list(active)}):
            a = active[row["id"]]
            if a.worker:
                # A warm worker outlives its calls by design: it is stopped only for
                # the call it runs now (it exits by itself when idle).
                if row["attempt"] == a.attempt and row["state"] in ("cancelled", "timed_out"):
                    log.info("stopping the warm worker %s running call %s attempt %d (%s)",
                             a.worker, a.call_id, a.attempt, row["state"])
                    self.launcher.stop(a.key)
                continue
            lingering = row["state"] in ("succeeded", "failed") and (
                row.get("finished_seconds_ago") or 0.0) >= FINISHED_GRACE_SECONDS
            if row["state"] in ("cancelled", "timed_out") or row["attempt"] != a.attempt \
                    or lingering:
                log.info("stopping call %s attempt %d (%s)", a.call_id, a.attempt, row["state"])
                self.launcher.stop(a.key)

    def launch_queued(self, idle_pools: list[str] | None = None) -> None:
        # Warm workers count like any attempt: one worker, one slot, busy or idle.
        room = self.settings.max_concurrency - len(self.launcher.active())
        if room <= 0:
            return
        # Claimed and armed in one statement: credentials for every free slot (up to
        # MINT_AHEAD a turn), the unused ones dropped; minting costs microseconds,
        # a round trip milliseconds.
        limit = min(room, MINT_AHEAD)
        minted = [environment.Credentials.mint() for _ in range(limit)]
        # A warm pool gets at most `warm_pool_workers` workers: a full pool is skipped
        # like one with an idle worker, and the others get only the room they have left.
        cap = self.warm_pool_workers
        skip = set(idle_pools or ()) | {p for p, n in self.pool_workers.items() if n >= cap}
        partial = {p: cap - n for p, n in self.pool_workers.items() if p not in skip}
        rows = self.db.all("claim_queued", {
            "limit": limit, "skip_pools": sorted(skip), "pool_workers": cap,
            "pools": list(partial), "pool_rooms": list(partial.values()),
            "secret_hashes": [c.secret_hash for c in minted],
            "token_hashes": [c.token_hash for c in minted]})
        if len(rows) == limit < room:
            self.wake.set()  # more may be queued: another turn now, not at the sweep
        refs: list[tuple[str, int, str]] = []
        try:
            for row in rows:
                self._launch_claimed(row, minted[row["slot"] - 1], refs)
        finally:
            if refs:
                try:
                    self.db.all("set_attempt_refs", {"ids": [r[0] for r in refs],
                                                     "attempts": [r[1] for r in refs],
                                                     "refs": [r[2] for r in refs]})
                except DatabaseError as exc:  # the refs are for people
                    log.warning("could not record the refs of %d launched calls: %s",
                                len(refs), exc)

    def _launch_claimed(self, row: dict[str, Any], credentials: environment.Credentials,
                        refs: list[tuple[str, int, str]]) -> None:
        """Launch one claimed call; its ref goes to `refs` (recorded once per turn)."""
        problem = unprocessable(row)
        if problem is not None:
            self.reject(row, problem)
            return
        attempt = dataclasses.replace(attempt_from(row), env=environment.runtime_environment(
            call_id=row["id"], attempt=row["attempt"], credentials=credentials,
            api_url=self.settings.runtime_api_url, spec=row["spec"]))
        if self.follows_workers and row["spec"].get("max_calls_per_worker", 1) != 1:
            attempt = dataclasses.replace(attempt, worker=f"{row['id']}/{row['attempt']}",
                                          env={**attempt.env, "PODFN_WARM": "1",
                                               **environment.pool_variable(row.get("pool"))})
            # The claim ranks only the oldest queued calls, so this pool's calls
            # past its room may hide other calls queued behind them: the next turn
            # counts this worker, skips the pool once full, and reaches those.
            self.wake.set()
        try:
            with metrics.LAUNCH_SECONDS.time():
                ref = self.launcher.launch(attempt)
        except Exception as exc:
            metrics.LAUNCH_FAILURES.inc()
            log.exception("launching call %s attempt %d failed", attempt.call_id,
                          attempt.attempt)
            self.record(Exit(attempt, "disrupted", f"could not launch the attempt: {exc}"))
            return
        refs.append((attempt.call_id, attempt.attempt, ref))

    def reject(self, row: dict[str, Any], problem: str) -> None:
        """Fail a claimed call the controller cannot launch; the reason names the fault."""
        log.error("call %s attempt %s cannot be processed: %s", row.get("id"),
                  row.get("attempt"), problem)
        self.db.one("fail", {"id": row["id"], "attempt": row["attempt"], "reason": problem,
                             "retryable": False, "exit_code": None, "error_type": None,
                             "error_message": None, "error_traceback": None,
                             "error_pickle": None, "stdout": None, "stderr": None})
        metrics.RECONCILE_RESULTS.labels("unprocessable", "failed").inc()
