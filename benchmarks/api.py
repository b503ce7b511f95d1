"""API figures: submit throughput with concurrent clients, result wake-up latency, payload sizes.

    python benchmarks/api.py submit [--clients 1,4,16] [--seconds 5] [--repeats 3]
    python benchmarks/api.py wakeup [--calls 50]
    python benchmarks/api.py sizes [--sizes 1,10,100] [--repeats 3]
    python benchmarks/api.py mapsubmit [--calls 10000] [--repeats 3]
    python benchmarks/api.py steps [--sizes 1] [--calls 30]

Prints a JSON list of rows (see benchmarks/run.py). Each starts an embedded
Postgres (or uses PODFN_DATABASE_URL), applies migrations and starts
`python -m podfn serve` (gunicorn, PODFN_WORKERS/PODFN_THREADS defaults) as a
process of its own. No controller runs, so what is measured is the API and
Postgres alone:

- submit: N client processes, each submitting one call per request
  (`APIClient.submit`, a small pickled function and argument) in a loop for a
  fixed time; calls accepted per second summed over clients.
- wakeup: a client thread long-polls a call (`Call.result()`); this process
  then does what a runtime does (the protocol's `claim`, then its `succeed`
  transition, committed) and times from the commit returning to the client
  thread holding the result. Same clock, same process.
- sizes: a call whose argument and result are both S MB, round trip = submit
  + the runtime's read of the argument + its write of the result + the
  client's read of the result (the runtime's part done here, as above), beside
  a raw Postgres bytea INSERT and SELECT of S MB on one connection (a
  temporary table, text-format SELECT: psycopg's default), and, for context,
  the same on a logged table with a binary SELECT, as podfn's storage is.
- steps: the `sizes` round trip split into its steps (submit, the
  controller's claim and arm, the runtime's claim, its succeed, the client's
  read of the result), per call, to see where the time goes.
- mapsubmit: `Function.map` over N trivial calls, timed until it returns its
  iterator (every call submitted, in batches bounded by count and bytes); calls
  submitted per second. One client process; the calls are then cancelled.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import psycopg
from claiming import UNARMED

from podfn import serialization
from podfn.call import Call
from podfn.http import APIClient
from podfn_platform import migrations
from podfn_platform.controller.environment import Credentials
from podfn_platform.database import Database
from podfn_platform.dev import free_port
from podfn_runtime.database import RuntimeDatabase

TOKEN = "bench-token"


def identity(x: Any) -> Any:
    return x


@contextmanager
def api_server(max_request_bytes: int | None = None, *,
               extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """`podfn serve` on a migrated database: (API URL, database URL); `extra_env` adds
    PODFN_* settings."""
    workdir = Path(tempfile.mkdtemp(prefix="podfn-bench-api-"))
    os.chmod(workdir, 0o755)
    pg = None
    url = os.environ.get("PODFN_DATABASE_URL")
    if not url:
        from podfn_platform.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres(workdir / "pgdata", delete=True)
        url = pg.url
    with Database(url, name="podfn-bench-migrate") as db:
        migrations.apply(db)
    port = free_port()
    env = {**os.environ, "PODFN_DATABASE_URL": url, "PODFN_API_TOKEN": TOKEN,
           "PODFN_PORT": str(port), "PODFN_LOG_LEVEL": "WARNING"}
    if max_request_bytes:
        env["PODFN_MAX_REQUEST_BYTES"] = str(max_request_bytes)
    env.update(extra_env or {})
    serve = subprocess.Popen([sys.executable, "-m", "podfn", "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{api}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or serve.poll() is not None:
                raise RuntimeError("podfn serve did not start")
            time.sleep(0.1)
        yield api, url
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        if pg is not None:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def submit_one(client: APIClient, function: bytes, arg: bytes) -> str:
    [call_id] = client.submit(function_name="bench.identity", function=function, args=[arg],
                              spec={}, versions=serialization.client_versions())
    return call_id


def _submit_loop(api: str, seconds: float, start_at: float, out: Any) -> None:
    client = APIClient(api, TOKEN)
    function = cloudpickle.dumps(identity)
    arg = cloudpickle.dumps(((1,), {}))
    submit_one(client, function, arg)  # connection up
    while time.time() < start_at:
        time.sleep(0.001)
    done, end = 0, start_at + seconds
    while time.time() < end:
        submit_one(client, function, arg)
        done += 1
    out.put(done)


def run_submitters(api: str, clients: int, seconds: float, *, start_delay: float) -> int:
    """Calls accepted from `clients` processes submitting for `seconds`, started together."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + start_delay
    procs = [ctx.Process(target=_submit_loop, args=(api, seconds, start_at, queue))
             for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(queue.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(30)
    return total


def fig_submit(clients: list[int], seconds: float, repeats: int) -> list[dict[str, Any]]:
    rows = []
    with api_server() as (api, _):
        for n in clients:
            rates = []
            for _ in range(repeats):
                total = run_submitters(api, n, seconds, start_delay=2.0 + 0.1 * n)
                rates.append(total / seconds)
            rows.append({"name": f"{n} concurrent client process(es), one call per request",
                         "unit": "calls/s", "values": rates, "higher_is_better": True})
    return rows


def arm(db: Database, call_id: str) -> str:
    """What the controller does at launch: an attempt secret, its hash stored on attempt 1."""
    minted = Credentials.mint()
    db.all("arm_attempts", {"ids": [call_id], "attempts": [1],
                            "secret_hashes": [minted.secret_hash],
                            "token_hashes": [minted.token_hash]})
    return minted.secret


def run_as_runtime(rdb: RuntimeDatabase, db: Database, call_id: str,
                   result: bytes) -> float:
    """Do what the controller and runtime do for one call; the time the result was committed."""
    claimed = db.all("claim_queued", {"limit": 1, **UNARMED})
    assert [r["id"] for r in claimed] == [call_id], claimed
    secret = arm(db, call_id)
    row = rdb.transition("claim", id=call_id, attempt=1, secret=secret)
    assert row is not None
    cloudpickle.loads(row["args"])  # the runtime loads the argument
    done = rdb.transition("succeed", id=call_id, attempt=1, result=result, result_json=None,
                          stdout="", stderr="", secret=secret)
    committed = time.perf_counter()
    assert done is not None
    return committed


def fig_wakeup(calls: int) -> list[dict[str, Any]]:
    function = cloudpickle.dumps(identity)
    arg = cloudpickle.dumps(((1,), {}))
    result = cloudpickle.dumps(1)
    latencies = []
    with api_server() as (api, url), Database(url, name="podfn-bench") as db:
        rdb = RuntimeDatabase(url, secret="")
        client = APIClient(api, TOKEN)
        for _ in range(calls + 3):
            call_id = submit_one(client, function, arg)
            got: list[float] = []
            waiting = threading.Thread(
                target=lambda cid=call_id, out=got: (
                    Call(cid, client=client).result(timeout=30),
                    out.append(time.perf_counter())))
            waiting.start()
            time.sleep(0.1)  # let the long-poll arm itself (LISTEN, then re-read)
            committed = run_as_runtime(rdb, db, call_id, result)
            waiting.join(30)
            latencies.append(got[0] - committed)
        rdb.close()
    return [{"name": "result wake-up: runtime commit -> waiting `Call.result()` returns",
             "unit": "ms", "values": [v * 1000 for v in latencies[3:]]}]


def fig_sizes(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    # The default PODFN_MAX_REQUEST_BYTES (64 MiB) refuses a 100 MB argument: raised here.
    limit = (max(sizes) * 2 + 16) * 1024 * 1024
    with api_server(limit) as (api, url), Database(url, name="podfn-bench") as db:
        rdb = RuntimeDatabase(url, secret="")
        client = APIClient(api, TOKEN, timeout=300)
        function = cloudpickle.dumps(identity)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE blobs (id serial primary key, data bytea)")
            # Context for the baseline: a temporary table writes no WAL and psycopg reads
            # bytea as hex text by default; podfn_calls is a logged table read in binary.
            conn.execute("CREATE TABLE IF NOT EXISTS bench_logged_blobs "
                         "(id serial primary key, data bytea)")
            for mb in sizes:
                blob = os.urandom(mb * 1024 * 1024)
                podfn_times, raw_times, logged_times = [], [], []
                for _ in range(repeats + 1):
                    started = time.perf_counter()
                    call_id = submit_one(client, function, serialization.dumps(((blob,), {})))
                    claimed = db.all("claim_queued", {"limit": 1, **UNARMED})
                    assert [r["id"] for r in claimed] == [call_id]
                    secret = arm(db, call_id)
                    row = rdb.transition("claim", id=call_id, attempt=1, secret=secret)
                    assert row is not None
                    (value,), _ = cloudpickle.loads(row["args"])
                    rdb.transition("succeed", id=call_id, attempt=1, secret=secret,
                                   result=cloudpickle.dumps(value), result_json=None,
                                   stdout="", stderr="")
                    assert Call(call_id, client=client).result(timeout=300) == blob
                    podfn_times.append(time.perf_counter() - started)

                    started = time.perf_counter()
                    [(rid,)] = conn.execute("INSERT INTO blobs (data) VALUES (%s) RETURNING id",
                                            (blob,)).fetchall()
                    [(back,)] = conn.execute("SELECT data FROM blobs WHERE id = %s",
                                             (rid,)).fetchall()
                    assert bytes(back) == blob
                    raw_times.append(time.perf_counter() - started)
                    conn.execute("DELETE FROM blobs")

                    started = time.perf_counter()
                    [(rid,)] = conn.execute("INSERT INTO bench_logged_blobs (data) VALUES (%s) "
                                            "RETURNING id", (blob,)).fetchall()
                    [(back,)] = conn.execute("SELECT data FROM bench_logged_blobs WHERE id = %s",
                                             (rid,), binary=True).fetchall()
                    assert bytes(back) == blob
                    logged_times.append(time.perf_counter() - started)
                    conn.execute("DELETE FROM bench_logged_blobs")
                rows.append({"name": f"{mb} MB argument + {mb} MB result, podfn round trip",
                             "unit": "ms", "values": [t * 1000 for t in podfn_times[1:]],
                             "group": f"{mb}MB", "role": "podfn"})
                rows.append({"name": f"{mb} MB raw Postgres bytea INSERT + SELECT",
                             "unit": "ms", "values": [t * 1000 for t in raw_times[1:]],
                             "group": f"{mb}MB", "role": "baseline"})
                rows.append({"name": f"{mb} MB raw bytea INSERT + SELECT, logged table, "
                                     "binary SELECT (context)",
                             "unit": "ms", "values": [t * 1000 for t in logged_times[1:]],
                             "group": f"{mb}MB"})
            conn.execute("DROP TABLE bench_logged_blobs")
        rdb.close()
    return rows


STEPS = ("submit", "controller claim + arm", "runtime claim", "runtime succeed",
         "client reads the result")


def fig_steps(sizes: list[int], calls: int) -> list[dict[str, Any]]:
    rows = []
    limit = (max(sizes) * 2 + 16) * 1024 * 1024
    with api_server(limit) as (api, url), Database(url, name="podfn-bench") as db:
        rdb = RuntimeDatabase(url, secret="")
        client = APIClient(api, TOKEN, timeout=300)
        function = cloudpickle.dumps(identity)
        for mb in sizes:
            blob = os.urandom(mb * 1024 * 1024)
            times: dict[str, list[float]] = {step: [] for step in STEPS}
            for i in range(calls + 1):
                arg = serialization.dumps(((blob,), {}))
                marks = [time.perf_counter()]
                call_id = submit_one(client, function, arg)
                marks.append(time.perf_counter())
                db.all("claim_queued", {"limit": 1, **UNARMED})
                secret = arm(db, call_id)
                marks.append(time.perf_counter())
                row = rdb.transition("claim", id=call_id, attempt=1, secret=secret)
                assert row is not None
                marks.append(time.perf_counter())
                (value,), _ = cloudpickle.loads(row["args"])
                result = cloudpickle.dumps(value)
                started = time.perf_counter()
                rdb.transition("succeed", id=call_id, attempt=1, secret=secret, result=result,
                               result_json=None, stdout="", stderr="")
                marks += [started, time.perf_counter()]
                assert Call(call_id, client=client).result(timeout=300) == blob
                marks.append(time.perf_counter())
                if i == 0:
                    continue  # warm-up
                spans = [marks[1] - marks[0], marks[2] - marks[1], marks[3] - marks[2],
                         marks[5] - marks[4], marks[6] - marks[5]]
                for step, span in zip(STEPS, spans, strict=True):
                    times[step].append(span * 1000)
            rows += [{"name": f"{mb} MB: {step}", "unit": "ms", "values": values}
                     for step, values in times.items()]
        rdb.close()
    return rows


def fig_mapsubmit(calls: int, repeats: int) -> list[dict[str, Any]]:
    from podfn.function import MAP_BATCH, Function

    rates = []
    with api_server() as (api, _):
        client = APIClient(api, TOKEN)
        fn = Function(identity, {}, name="bench.identity", client=client)
        fn.map(range(3))  # connection up, modules imported
        client.cancel_many(mine=True)
        for _ in range(repeats):
            started = time.perf_counter()
            fn.map(range(calls))
            rates.append(calls / (time.perf_counter() - started))
            client.cancel_many(mine=True)
    return [{"name": f"`.map` submit of {calls:,} trivial calls ({MAP_BATCH} per request), "
                     "one client", "unit": "calls/s", "values": rates,
             "higher_is_better": True}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("figure", choices=["submit", "wakeup", "sizes", "mapsubmit", "steps"])
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--sizes", default="1,10,100")
    ns = parser.parse_args()
    if ns.figure == "submit":
        rows = fig_submit([int(c) for c in ns.clients.split(",")], ns.seconds, ns.repeats)
    elif ns.figure == "steps":
        rows = fig_steps([int(s) for s in ns.sizes.split(",")],
                         ns.calls if ns.calls != 50 else 30)
    elif ns.figure == "mapsubmit":
        rows = fig_mapsubmit(ns.calls if ns.calls != 50 else 10_000, ns.repeats)
    elif ns.figure == "wakeup":
        rows = fig_wakeup(ns.calls)
    else:
        rows = fig_sizes([int(s) for s in ns.sizes.split(",")], ns.repeats)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
