"""What `min_workers` buys an HTTP invoke, and what keeping standing workers costs a turn.

    python benchmarks/standing.py [--calls 50] [--turns 300]

Starts a throwaway `podfn dev` stack (embedded Postgres unless
PODFN_DATABASE_URL is set; API under gunicorn; controller with the local
launcher), deploys one trivial function three ways and times sequential HTTP
invokes of each (median and p95, ms):

- cold: `min_workers=0`, `max_calls_per_worker=1` (a process per invoke);
- standing, one call each: `min_workers=2`, `max_calls_per_worker=1` (each
  invoke finds a pre-started process, replaced once it has run its call);
- standing, warm: `min_workers=2`, `max_calls_per_worker=None`.

Then, in this process, against the same database with a launcher that runs
nothing: the time of a controller turn with and without `keep_standing`
(nothing deployed wants standing workers: its three statements are what
every turn pays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from podfn import remote
from podfn.settings import Settings
from podfn_platform.controller.launcher import Attempt, Exit
from podfn_platform.controller.loop import Controller
from podfn_platform.database import Database
from podfn_platform.dev import DevStack, free_port


def identity(x: int) -> int:
    return x


VARIANTS = {
    "cold (min_workers=0, max_calls_per_worker=1)": {"min_workers": 0},
    "standing, one call each (min_workers=2, max_calls_per_worker=1)": {"min_workers": 2},
    "standing, warm (min_workers=2, max_calls_per_worker=None)": {
        "min_workers": 2, "max_calls_per_worker": None},
}


def _wait_standing(database_url: str, name: str, count: int) -> None:
    deadline = time.monotonic() + 60
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM podfn_workers WHERE function_name = %s "
                               "AND ref IS NOT NULL AND retired_at IS NULL", (name,)).fetchone()
            if row and row[0] >= count:
                return
            time.sleep(0.05)
    raise SystemExit(f"{name}: {count} standing workers did not start")


def _summary(times: list[float]) -> str:
    times = sorted(times)
    p95 = times[int(0.95 * (len(times) - 1))]
    return f"median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, min {times[0]:.1f} ms"


def _phases(database_url: str, name: str) -> str:
    """Where an invoke's time went, from Postgres's timestamps (medians, ms)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT EXTRACT(EPOCH FROM started_at - created_at) * 1000, "
            "EXTRACT(EPOCH FROM finished_at - started_at) * 1000 "
            "FROM podfn_calls WHERE function_name = %s AND state = 'succeeded'",
            (name,)).fetchall()
    queued = statistics.median(float(r[0]) for r in rows)
    ran = statistics.median(float(r[1]) for r in rows)
    return f"submitted -> running {queued:.1f} ms, running -> recorded {ran:.1f} ms"


class _Idle:
    """A launcher with nothing running that can follow workers (so keep_standing runs)."""

    def start(self) -> None: ...
    def launch(self, attempt: Attempt) -> str: raise AssertionError("nothing to launch")
    def stop(self, key: tuple[str, int]) -> None: ...
    def active(self) -> list[Attempt]: return []
    def exits(self) -> list[Exit]: return []
    def settle(self, exit_: Exit) -> None: ...
    def next_deadline(self) -> float | None: return None
    def reconcile(self, unfinished: Any, *, full: bool) -> None: ...
    def close(self) -> None: ...
    def workers(self) -> dict[str, Attempt]: return {}
    def rebind(self, worker: str, attempt: Attempt | None, seconds: float) -> None: ...


def _turns(database_url: str, turns: int) -> None:
    settings = Settings.from_env()
    with Database(database_url, name="podfn-bench") as db:
        with psycopg.connect(database_url, autocommit=True) as conn:  # nothing wants any
            conn.execute("UPDATE podfn_function_versions SET spec = spec || '{\"min_workers\": 0}'")
        controller = Controller(settings, db, _Idle(), threading.Event())  # type: ignore[arg-type]
        for label, keep in (("with keep_standing", True), ("without", False),
                            ("with keep_standing", True)):
            if not keep:
                controller.keep_standing = lambda: None  # type: ignore[method-assign]
            else:
                controller.__dict__.pop("keep_standing", None)
            times = []
            for _ in range(turns):
                started = time.perf_counter()
                controller.turn()
                times.append((time.perf_counter() - started) * 1000)
            print(f"controller turn, idle, {label}: {_summary(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--turns", type=int, default=300)
    ns = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-"))
    os.chmod(workdir, 0o755)
    with DevStack(Settings.from_env(), workdir, free_port(), temporary=True).start(quiet=True) as stack:
        os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"] = stack.url, stack.token
        with httpx.Client(base_url=stack.url, timeout=60,
                          headers={"Authorization": f"Bearer {stack.token}"}) as client:
            for i, (label, hints) in enumerate(VARIANTS.items()):
                name = f"identity{i}"
                remote(name=name, **hints)(identity).deploy()  # type: ignore[call-overload]
                if hints["min_workers"]:
                    _wait_standing(stack.database_url, name, hints["min_workers"])
                times = []
                for x in range(ns.calls):
                    started = time.perf_counter()
                    body = client.post(f"/v1/functions/{name}/invoke", json={"args": [x]}).json()
                    times.append((time.perf_counter() - started) * 1000)
                    assert body["value"] == x, body
                print(f"HTTP invoke, {ns.calls} sequential, {label}: {_summary(times)}")
                print(f"  {_phases(stack.database_url, name)}")
        _turns(stack.database_url, ns.turns)


if __name__ == "__main__":
    main()
