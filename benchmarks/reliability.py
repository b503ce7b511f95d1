"""Reliability figures of the API: answers under held connections, memory serving a large result.

    python benchmarks/reliability.py held [--requests 200] [--long-polls 64] [--slow 20]
    python benchmarks/reliability.py result [--mib 64]

Prints a JSON list of rows (see benchmarks/run.py). Both start `podfn serve`
(gunicorn with podfn's worker, benchmarks/api.py's `api_server`) on an
embedded Postgres (or PODFN_DATABASE_URL); no controller runs.

- held: opens L long-polls (POST /v1/calls/wait on a call that never
  finishes, wait 55 s) and S sockets that sent half a request head and then
  nothing, then times R requests of each kind one after another from one
  client: GET /healthz, a submit (POST /v1/calls, one small call), a read
  (GET /v1/calls/{id}). Default settings (2 workers x 16 request threads).
- result: stores a succeeded call whose pickled result is M MiB (as the
  runtime would: claim, then the `succeed` transition), then fetches it
  through the client (`Call.result()`: GET /v1/calls/{id}/result, streamed).
  One gunicorn worker; its VmRSS (/proc) before, and its VmHWM (peak RSS)
  after the fetch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import api  # a sibling script (python puts benchmarks/ first on sys.path)
import cloudpickle
import httpx
from claiming import UNARMED
from memory import children, rss_kib

from podfn.call import Call
from podfn.http import APIClient
from podfn.settings import Settings
from podfn_platform import roles
from podfn_platform.controller.environment import Credentials
from podfn_platform.database import Database
from podfn_platform.roles import runtime_database_url
from podfn_runtime.database import RuntimeDatabase


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _one_call(client: APIClient) -> str:
    return api.submit_one(client, cloudpickle.dumps(api.identity), cloudpickle.dumps(((1,), {})))


def _raw(url: str, data: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(data)
    return sock


def fig_held(requests: int, long_polls: int, slow: int) -> list[dict[str, Any]]:
    rows = []
    with api.api_server() as (url, _db_url), APIClient(url, api.TOKEN) as client:
        call_id = _one_call(client)
        body = json.dumps({"ids": [call_id], "wait": 55}).encode()
        head = (b"POST /v1/calls/wait HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer "
                + api.TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        held = [_raw(url, head + body) for _ in range(long_polls)]
        held += [_raw(url, b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Slow: ") for _ in range(slow)]
        time.sleep(1.0)  # let every long-poll reach its wait
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api.TOKEN}"},
                            timeout=30)
        kinds = {
            "GET /healthz": lambda: http.get("/healthz").raise_for_status(),
            "submit (POST /v1/calls)": lambda: _one_call(client),
            "read (GET /v1/calls/{id})": lambda: http.get(f"/v1/calls/{call_id}")
            .raise_for_status(),
        }
        try:
            for name, request in kinds.items():
                request()  # connection up
                times = []
                for _ in range(requests):
                    start = time.perf_counter()
                    request()
                    times.append((time.perf_counter() - start) * 1000)
                rows.append({"name": f"{name} while {long_polls} long-polls and {slow} "
                                     "slow-header sockets are held", "unit": "ms",
                             "values": times})
        finally:
            http.close()
            for sock in held:
                sock.close()
    return rows


def fig_result(mib: int) -> list[dict[str, Any]]:
    payload = cloudpickle.dumps(os.urandom(mib * 1024 * 1024 - 64))
    with api.api_server(extra_env={"PODFN_WORKERS": "1"}) as (url, db_url), \
            APIClient(url, api.TOKEN) as client:
        serve = next(p for p in children(os.getpid())
                     if "podfn" in Path(f"/proc/{p}/cmdline").read_text(errors="replace"))
        [worker] = children(serve)
        call_id = _one_call(client)
        settings = Settings.from_env(database_url=db_url)
        with Database(db_url, name="podfn-bench-controller") as db:
            roles.ensure(db, roles.Roles.from_settings(settings))  # as `podfn dev` does
            # As the controller launches, then as the runtime records: through the
            # runtime protocol, with the attempt's own secret.
            claimed = db.all("claim_queued", {"limit": 1, **UNARMED})
            assert [r["id"] for r in claimed] == [call_id], "use a database of its own"
            minted = Credentials.mint()
            db.all("arm_attempts", {"ids": [call_id], "attempts": [1],
                                    "secret_hashes": [minted.secret_hash],
                                    "token_hashes": [minted.token_hash]})
        runtime = RuntimeDatabase(runtime_database_url(settings), minted.secret)
        try:
            assert runtime.transition("claim", id=call_id, attempt=1) is not None
            assert runtime.transition("succeed", id=call_id, attempt=1, result=payload,
                                      result_json=None, stdout="", stderr="") is not None
        finally:
            runtime.close()
        Call(call_id, client=client).info()  # the worker's pool and imports warm
        before = rss_kib(worker) / 1024
        start = time.perf_counter()
        value = Call(call_id, client=client).result(timeout=120)
        seconds = time.perf_counter() - start
        assert len(value) == mib * 1024 * 1024 - 64
        peak = _vm(worker, "VmHWM")
    return [
        {"name": "API worker RSS before serving the result", "unit": "MiB", "values": [before]},
        {"name": f"API worker peak RSS (VmHWM) after serving a {len(payload) / 2**20:.0f} MiB "
                 "result", "unit": "MiB", "values": [peak]},
        {"name": f"Call.result() of the {mib} MiB result, wall time", "unit": "s",
         "values": [seconds]},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("figure", choices=["held", "result"])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--long-polls", type=int, default=64)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--mib", type=int, default=64)
    ns = parser.parse_args()
    rows = (fig_held(ns.requests, ns.long_polls, ns.slow) if ns.figure == "held"
            else fig_result(ns.mib))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
