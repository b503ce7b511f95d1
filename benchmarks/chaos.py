"""Chaos run: many calls on the embedded stack while the platform is hurt, then a history check.

    python benchmarks/chaos.py                  # 1,000 calls, every fault several times
    python benchmarks/chaos.py --calls 100 --quick   # one of each fault (the test suite's run)

It starts Postgres (embedded), the API (`podfn serve`, gunicorn) and a
controller (`podfn controller`, local launcher with the forkserver) as
processes, and restarts the API or the controller when one exits, as a
Kubernetes Deployment would. It submits calls of four kinds:

- `ok`: sleeps 0-1.5 s and returns its index;
- `raise`: always raises, with `retries=1` (final: failed, 1 user failure);
- `retry`: raises on its first run only (a marker file), with `retries=2`
  (final: succeeded, at most 1 user failure);
- `slow`: sleeps past its `timeout=2` (final: timed_out).

While they run it injects, at random moments: `kill -9` of the controller,
`pg_terminate_backend` of random podfn backends, SIGTERM to random runtime
processes (how a kubelet or an operator stops a process; SIGKILL is what the
out-of-memory killer sends, and stays the user's failure), SIGKILL of an API
worker, and one restart of Postgres. Then it reads the recorded history from
Postgres and checks:

- every call final, and 0 lost (every submitted call is in the table with the
  final state its kind implies; a succeeded call's result is its index);
- 0 results written twice (at most one attempt per call ends in a final
  state, at most one succeeds);
- 0 user retries spent on injected faults (user failures = exactly what the
  kind implies: 0 for ok and slow, 1 for raise, at most 1 for retry);
- every call final within its deadline plus the reconcile interval (each
  attempt ends within `timeout` + the sweep interval + the time the controller
  was down, since an attempt of a killed controller can only be recorded by
  the next one).

It prints a table and exits 1 if any check fails. The seed makes the fault
schedule reproducible (the machine's timing still varies).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import psycopg
from psycopg.rows import dict_row

from podfn import remote
from podfn.call import close_default_clients
from podfn.errors import PodfnError
from podfn_platform import migrations, roles
from podfn_platform.database import Database
from podfn_platform.dev import free_port
from podfn_platform.embedded import EmbeddedPostgres
from podfn_runtime import reaper

FINAL = ("succeeded", "failed", "timed_out", "cancelled")
EXPECTED_STATE = {"ok": "succeeded", "raise": "failed", "retry": "succeeded", "slow": "timed_out"}
SWEEP_SECONDS = 1.0
CALL_TIMEOUT = 30  # seconds, for every kind but `slow`
SLOW_TIMEOUT = 2


# -- the calls -----------------------------------------------------------------------


def work(index: int, kind: str, seconds: float, marker: str) -> int:
    """One chaos call (pickled by value: this is __main__)."""
    if kind == "raise":
        raise ValueError(f"call {index} raises, as asked")
    if kind == "retry" and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write("ran once")
        raise RuntimeError(f"call {index} fails on its first run, as asked")
    time.sleep(seconds)
    return index


@dataclass
class Planned:
    index: int
    kind: str
    seconds: float
    call_id: str | None = None
    submit_errors: int = 0


def plan(calls: int, rng: random.Random) -> list[Planned]:
    kinds = rng.choices(["ok", "raise", "retry", "slow"], weights=[80, 8, 8, 4], k=calls)
    out = []
    for i, kind in enumerate(kinds):
        seconds = SLOW_TIMEOUT + 30 if kind == "slow" else rng.choice([0, 0.05, 0.2, 0.5, 1.5])
        out.append(Planned(i, kind, seconds))
    return out


# -- the stack -------------------------------------------------------------------------


@dataclass
class Stack:
    """Postgres, API and controller as processes; the API and controller restarted when they exit."""

    workdir: Path
    concurrency: int
    max_disruptions: int
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    postgres: EmbeddedPostgres | None = None
    api: subprocess.Popen[bytes] | None = None
    controller: subprocess.Popen[bytes] | None = None
    restarts: Counter[str] = field(default_factory=Counter)
    controller_down_seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Stack:
        self.postgres = EmbeddedPostgres(self.workdir / "pgdata", delete=True)
        # As `podfn dev` and the chart do: migrate as the owner, then run the API and
        # the controller as the platform role and the runtimes as the runtime role.
        names = roles.Roles("podfn_platform", "podfn_runtime", secrets.token_urlsafe(16),
                            secrets.token_urlsafe(16))
        with Database(self.postgres.url, name="podfn-migrate") as db:
            migrations.apply(db)
            roles.ensure(db, names)
        self.env = {**os.environ,
                    "PODFN_DATABASE_URL": roles.as_role(self.postgres.url, names.platform,
                                                        names.platform_password),
                    "PODFN_RUNTIME_DATABASE_URL": roles.as_role(
                        self.postgres.url, names.runtime, names.runtime_password),
                    "PODFN_API_TOKEN": self.token, "PODFN_HOST": "127.0.0.1",
                    "PODFN_PORT": str(self.port), "PODFN_LAUNCHER": "local",
                    "PODFN_SWEEP_SECONDS": str(SWEEP_SECONDS),
                    "PODFN_MAX_CONCURRENCY": str(self.concurrency),
                    "PODFN_MAX_DISRUPTIONS": str(self.max_disruptions),
                    "PODFN_CONTROLLER_METRICS_PORT": "0",
                    "PODFN_RUNTIME_WRITE_RETRY_SECONDS": "60",
                    "PODFN_LOG_LEVEL": os.environ.get("PODFN_LOG_LEVEL", "WARNING")}
        self.api = self._spawn("serve")
        self.controller = self._spawn("controller")
        threading.Thread(target=self._supervise, daemon=True, name="chaos-supervisor").start()
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not become ready")
            time.sleep(0.1)

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{command}.log").open("ab")
        with log:
            return subprocess.Popen([sys.executable, "-m", "podfn", command], env=self.env,
                                    stdout=log, stderr=log, start_new_session=True)

    def _supervise(self) -> None:
        """Restart what exited (a Deployment's restartPolicy), counting the restarts."""
        while not self._stop.wait(0.1):
            with self._lock:
                if self.controller is not None and self.controller.poll() is not None:
                    down = time.monotonic()
                    self.restarts[f"controller (exit {self.controller.returncode})"] += 1
                    self.controller = self._spawn("controller")
                    self.controller_down_seconds = max(self.controller_down_seconds,
                                                       time.monotonic() - down + 0.1)
                if self.api is not None and self.api.poll() is not None:
                    self.restarts[f"api (exit {self.api.returncode})"] += 1
                    self.api = self._spawn("serve")

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for proc in (self.api, self.controller):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
            for proc in (self.api, self.controller):
                if proc is not None:
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        if self.postgres is not None:
            self.postgres.stop()

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        assert self.postgres is not None
        return psycopg.connect(self.postgres.url, autocommit=True, row_factory=dict_row,
                               application_name="chaos-observer")


# -- the faults ---------------------------------------------------------------------------


@dataclass
class Faults:
    stack: Stack
    rng: random.Random
    injected: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def kill_controller(self) -> bool:
        proc = self.stack.controller
        if proc is None or proc.poll() is not None:
            return False
        os.kill(proc.pid, signal.SIGKILL)
        return True

    def terminate_backends(self) -> bool:
        with self.stack.connect() as conn:
            rows = conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'podfn%%' "
                "AND pid <> pg_backend_pid()").fetchall()
            if not rows:
                return False
            for row in self.rng.sample(rows, k=min(len(rows), self.rng.randint(1, 3))):
                conn.execute("SELECT pg_terminate_backend(%s)", (row["pid"],))
                self.injected[f"  backend of {row['application_name']}"] += 1
        return True

    def runtimes(self) -> list[int]:
        proc = self.stack.controller
        if proc is None:
            return []
        zygotes = [pid for pid in reaper.descendants(proc.pid)
                   if reaper.parent_of(pid) == proc.pid]
        return [pid for pid in reaper.descendants(proc.pid)
                if reaper.parent_of(pid) in zygotes]

    def kill_runtime(self) -> bool:
        pids = self.runtimes()
        if not pids:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.rng.choice(pids), signal.SIGTERM)
        return True

    def kill_api_worker(self) -> bool:
        proc = self.stack.api
        if proc is None:
            return False
        workers = [pid for pid in reaper.descendants(proc.pid)
                   if reaper.parent_of(pid) == proc.pid]
        if not workers:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.rng.choice(workers), signal.SIGKILL)
        return True

    def restart_postgres(self) -> bool:
        assert self.stack.postgres is not None
        started = time.monotonic()
        self.stack.postgres.restart()
        self.notes.append(f"Postgres was down for {time.monotonic() - started:.1f} s")
        return True

    def schedule(self, quick: bool, span: float) -> list[tuple[float, str]]:
        counts = {"kill_controller": 1, "terminate_backends": 1, "kill_runtime": 1,
                  "kill_api_worker": 1, "restart_postgres": 1}
        if not quick:
            counts.update(kill_controller=5, terminate_backends=10, kill_runtime=25,
                          kill_api_worker=2)
        events = [(self.rng.uniform(0.1, 0.9) * span, name)
                  for name, n in counts.items() for _ in range(n)]
        return sorted(events)

    def run(self, events: list[tuple[float, str]], done: Callable[[], bool]) -> None:
        started = time.monotonic()
        for at, name in events:
            while time.monotonic() - started < at:
                if done():
                    return
                time.sleep(0.05)
            # A fault that finds nothing to hit (no runtime running yet) is tried again soon.
            for _ in range(200):  # up to 10 s
                try:
                    hit = getattr(self, name)()
                except Exception as exc:  # the stack is hurt on purpose: note it, go on
                    self.notes.append(f"{name}: {type(exc).__name__}: {exc}")
                    hit = False
                if hit or done():
                    break
                time.sleep(0.05)
            if hit:
                self.injected[name] += 1


# -- the run ---------------------------------------------------------------------------------


def submit(stack: Stack, planned: list[Planned], markers: Path) -> None:
    fn = remote(work)

    def one(p: Planned) -> None:
        options: dict[str, Any] = {"timeout": CALL_TIMEOUT}
        if p.kind == "raise":
            options["retries"] = 1
        elif p.kind == "retry":
            options.update(retries=2, retry_backoff=0.1)
        elif p.kind == "slow":
            options["timeout"] = SLOW_TIMEOUT
        for _ in range(30):
            try:
                p.call_id = fn.options(**options).spawn(p.index, p.kind, p.seconds,
                                                        str(markers / str(p.index))).id
                return
            except PodfnError:
                p.submit_errors += 1  # the client retried already; the API may be restarting
                time.sleep(0.5)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, planned))


def history(stack: Stack, ids: list[str]) -> tuple[dict[str, dict[str, Any]],
                                                   dict[str, list[dict[str, Any]]]]:
    with stack.connect() as conn:
        calls = {r["id"]: r for r in conn.execute(
            "SELECT id, state, attempt, user_failures, disruptions, reason, result, spec, "
            "created_at, finished_at FROM podfn_calls WHERE id = ANY(%s)", (ids,))}
        attempts: dict[str, list[dict[str, Any]]] = {}
        for r in conn.execute(
                "SELECT call_id, attempt, state, reason, launched_at, started_at, finished_at "
                "FROM podfn_attempts WHERE call_id = ANY(%s) ORDER BY call_id, attempt", (ids,)):
            attempts.setdefault(r["call_id"], []).append(r)
    return calls, attempts


def wait_final(stack: Stack, ids: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with stack.connect() as conn:
                row = conn.execute("SELECT count(*) AS n FROM podfn_calls WHERE id = ANY(%s) "
                                   "AND state IN ('succeeded', 'failed', 'timed_out', "
                                   "'cancelled')", (ids,)).fetchone()
            if row is not None and row["n"] == len(ids):
                return True
        except psycopg.OperationalError:
            pass  # Postgres is restarting
        time.sleep(0.5)
    return False


@dataclass
class Verdict:
    rows: list[tuple[str, str, bool]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def check(self, what: str, value: Any, ok: bool) -> None:
        self.rows.append((what, str(value), ok))

    @property
    def ok(self) -> bool:
        return all(ok for _, _, ok in self.rows)


def judge(planned: list[Planned], calls: dict[str, dict[str, Any]],
          attempts: dict[str, list[dict[str, Any]]], slack: float) -> Verdict:
    v = Verdict()
    never_submitted = [p for p in planned if p.call_id is None]
    lost, not_final, wrong, doubled, charged, late = [], [], [], [], [], []
    worst_late = 0.0
    for p in planned:
        if p.call_id is None:
            continue
        call = calls.get(p.call_id)
        if call is None:
            lost.append(p)
            continue
        if call["state"] not in FINAL:
            not_final.append(p)
            continue
        expected = EXPECTED_STATE[p.kind]
        if call["state"] != expected or (
                expected == "succeeded" and cloudpickle.loads(call["result"]) != p.index):
            wrong.append(p)
            v.problems.append(f"call {p.index} ({p.kind}) {call['state']}: {call['reason']}")
        mine = attempts.get(p.call_id, [])
        ended = [a for a in mine if a["state"] in FINAL]
        if len(ended) > 1 or sum(a["state"] == "succeeded" for a in mine) > 1:
            doubled.append(p)
        allowed = {"ok": 0, "slow": 0, "raise": 1, "retry": 1}[p.kind]
        if call["user_failures"] > allowed or (p.kind == "raise" and call["user_failures"] != 1):
            charged.append(p)
            v.problems.append(f"call {p.index} ({p.kind}) charged {call['user_failures']} user "
                              f"failures: " + "; ".join(f"#{a['attempt']} {a['state']}: "
                                                         f"{(a['reason'] or '')[:120]}"
                                                         for a in mine))
        timeout = call["spec"].get("timeout") or CALL_TIMEOUT
        for a in mine:
            if a["finished_at"] is None:
                continue
            took = (a["finished_at"] - a["launched_at"]) / timedelta(seconds=1)
            over = took - timeout
            worst_late = max(worst_late, over)
            if over > slack:
                late.append(p)
                v.problems.append(f"call {p.index} attempt {a['attempt']} ended {over:.1f} s "
                                  f"after its {timeout} s deadline ({a['state']})")
                break
    v.check("calls submitted", len(planned) - len(never_submitted), not never_submitted)
    v.check("lost (submitted, not in the table)", len(lost), not lost)
    v.check("not final", len(not_final), not not_final)
    v.check("final state or result not the kind's", len(wrong), not wrong)
    v.check("results written twice", len(doubled), not doubled)
    v.check("user retries spent on injected faults", len(charged), not charged)
    v.check(f"attempts past deadline + {slack:.1f} s", len(late), not late)
    v.check("latest attempt end past its deadline (s)", f"{worst_late:.1f}", True)
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="one of each fault")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--keep-logs", type=Path, default=None,
                        help="copy the API's and controller's logs into this directory")
    parser.add_argument("--max-disruptions", type=int, default=10,
                        help="PODFN_MAX_DISRUPTIONS for the run (default 10: the run injects "
                             "faults far faster than a bad day; each controller kill disrupts "
                             "every running attempt)")
    ns = parser.parse_args(argv)
    rng = random.Random(ns.seed)
    workdir = Path(tempfile.mkdtemp(prefix="podfn-chaos-"))
    os.chmod(workdir, 0o755)  # the embedded Postgres runs as another user under root
    markers = workdir / "markers"
    markers.mkdir()
    planned = plan(ns.calls, rng)
    stack = Stack(workdir, ns.concurrency, ns.max_disruptions)
    started = time.monotonic()
    try:
        stack.start()
        os.environ.update({"PODFN_URL": stack.url, "PODFN_TOKEN": stack.token})
        faults = Faults(stack, rng)
        # A rough length of the run, over which the faults are spread.
        span = max(4.0, sum(p.seconds if p.kind != "slow" else SLOW_TIMEOUT for p in planned)
                   / ns.concurrency + len(planned) * 0.01)
        submitted = threading.Event()
        ids: list[str] = []
        all_final = threading.Event()
        injector = threading.Thread(target=faults.run, args=(faults.schedule(ns.quick, span),
                                                            all_final.is_set), daemon=True)
        injector.start()
        submit(stack, planned, markers)
        submitted.set()
        ids = [p.call_id for p in planned if p.call_id]
        finished = wait_final(stack, ids, timeout=600)
        all_final.set()
        injector.join(60)
        elapsed = time.monotonic() - started
        calls, attempts = history(stack, ids)
        slack = SWEEP_SECONDS + stack.controller_down_seconds + 3.0
        verdict = judge(planned, calls, attempts, slack)
        if not finished:
            verdict.problems.append("not every call was final after 600 s")
    finally:
        close_default_clients()
        stack.stop()
        if ns.keep_logs is not None:
            ns.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, ns.keep_logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)
    kinds = Counter(p.kind for p in planned)
    disruptions = sum(c["disruptions"] for c in calls.values())
    most = max((c["disruptions"] for c in calls.values()), default=0)
    over_default = sum(c["disruptions"] > 3 for c in calls.values())
    print(f"\nchaos run: {len(planned)} calls ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
          f"seed {ns.seed}, concurrency {ns.concurrency}, {elapsed:.1f} s")
    print("\n| fault injected | times |\n| --- | --- |")
    for name, n in sorted(faults.injected.items()):
        print(f"| {name.replace('_', ' ')} | {n} |")
    print("\n| what the platform did | count |\n| --- | --- |")
    for name, n in sorted(stack.restarts.items()):
        print(f"| restarted {name} | {n} |")
    print(f"| attempts disrupted (platform retries, not charged) | {disruptions} |")
    print(f"| most disruptions of one call (PODFN_MAX_DISRUPTIONS={ns.max_disruptions}) | {most} |")
    print(f"| calls disrupted more than 3 times (the default limit) | {over_default} |")
    print(f"| submissions that needed a resubmit | {sum(p.submit_errors > 0 for p in planned)} |")
    print("\n| check | value | ok |\n| --- | --- | --- |")
    for what, value, ok in verdict.rows:
        print(f"| {what} | {value} | {'yes' if ok else 'NO'} |")
    for note in faults.notes:
        print(f"note: {note}")
    for problem in verdict.problems[:30]:
        print(f"problem: {problem}")
    return 0 if verdict.ok and not verdict.problems else 1


if __name__ == "__main__":
    sys.exit(main())
