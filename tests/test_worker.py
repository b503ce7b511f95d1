"""The API under gunicorn with podfn's worker: it answers while long-polls and slow sockets are held.

Real sockets against `podfn serve` in a subprocess. One worker with 4 request
threads: with stock gthread, 64 long-polls or 20 half-sent heads would hold
every thread and /healthz would not answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import TEST_TOKEN
from podfn_platform.worker import is_long_poll

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
META = json.dumps({"function_name": "f", "spec": {}, "client": {"python": "3.11",
                                                                 "cloudpickle": "3.1"}})


@pytest.mark.parametrize(("head", "long"), [
    (b"POST /v1/calls/wait HTTP/1.1\r\n", True),
    (b"GET /v1/calls/abc/result?wait=30 HTTP/1.1\r\n", True),
    (b"GET /v1/calls/abc/result?wait=0 HTTP/1.1\r\n", False),
    (b"GET /v1/calls/abc/result?x=1&wait=0.0 HTTP/1.1\r\n", False),
    (b"GET /v1/calls/abc/result?wait=0.5 HTTP/1.1\r\n", True),
    (b"POST /v1/functions/add/invoke HTTP/1.1\r\n", True),
    (b"POST /v1/calls HTTP/1.1\r\n", False),
    (b"POST /v1/calls?wait=30 HTTP/1.1\r\n", True),
    (b"POST /v1/calls?wait=0 HTTP/1.1\r\n", False),
    (b"POST /v1/functions/add/calls?x=1&wait=2.5 HTTP/1.1\r\n", True),
    (b"POST /v1/functions/add/calls HTTP/1.1\r\n", False),
    (b"GET /v1/calls/abc HTTP/1.1\r\n", False),
    (b"GET /healthz HTTP/1.1\r\n", False),
    (b"\r\nPOST /v1/calls/wait HTTP/1.1\r\n", True),
    (b"garbage", False),
])
def test_long_polls_are_recognised_by_their_request_line(head: bytes, long: bool) -> None:
    assert is_long_poll(head) is long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PODFN_DATABASE_URL": database_url, "PODFN_API_TOKEN": TEST_TOKEN,
           "PODFN_PORT": str(port), "PODFN_WORKERS": "1", "PODFN_THREADS": "4",
           "PODFN_LONGPOLL_THREADS": "80", "PODFN_HEADER_TIMEOUT_SECONDS": "2",
           "PODFN_MAX_WAIT_SECONDS": "60"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "podfn", "serve"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "podfn serve did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            # Long-polls answer at once on SIGTERM: no waiting out the graceful timeout.
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def raw(url: str, request: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(request)
    return sock


def test_health_submits_and_reads_answer_while_long_polls_and_slow_heads_are_held(
        served: str) -> None:
    with httpx.Client(base_url=served, headers=AUTH, timeout=10) as http:
        created = http.post("/v1/calls", data={"meta": META},
                            files=[("function", ("f", b"fn")), ("args", ("a", b"args"))])
        call_id = created.json()["calls"][0]["id"]  # stays queued: no controller runs
        body = json.dumps({"ids": [call_id], "wait": 50}).encode()
        long_polls = [raw(served, b"POST /v1/calls/wait HTTP/1.1\r\nHost: t\r\n"
                          b"Authorization: Bearer " + TEST_TOKEN.encode() + b"\r\n"
                          b"Content-Type: application/json\r\n"
                          b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                      for _ in range(64)]
        slow = [raw(served, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ") for _ in range(20)]
        try:
            for _ in range(5):
                assert http.get("/healthz").status_code == 200
                assert http.get(f"/v1/calls/{call_id}").json()["state"] == "queued"
                again = http.post("/v1/calls", data={"meta": META},
                                  files=[("function", ("f", b"fn")), ("args", ("a", b"a"))])
                assert again.status_code == 201
            # The long-polls are still waiting: nothing came back on them yet.
            for sock in long_polls[:4]:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
            # The half-sent heads are dropped after PODFN_HEADER_TIMEOUT_SECONDS.
            for sock in slow:
                sock.settimeout(20)
                assert sock.recv(1) == b""
        finally:
            for sock in long_polls + slow:
                sock.close()
