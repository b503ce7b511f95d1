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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _response(stream: Any) -> tuple[int, bytes]:
    """One HTTP/1.1 response of known length off `stream`: (status, body)."""
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, stream.read(length)


def _framed_submission(args: bytes) -> bytes:
    from podfn import frames

    head = {"meta": json.loads(META), "parts": ["function", "args"]}
    return b"".join(frames.encode(head, [b"fn", args]))


def test_a_framed_body_read_off_the_socket_leaves_the_next_request_intact(
        served: str) -> None:
    """DirectBody: a framed submission and a request pipelined behind it in one write;
    the body is read straight off the socket, the request after it is answered."""
    body = _framed_submission(os.urandom(700_000))
    request = (b"POST /v1/calls HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
               + TEST_TOKEN.encode() + b"\r\nContent-Type: application/x-podfn-frames\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
               + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    sock = raw(served, request)
    with sock, sock.makefile("rb") as stream:
        status, answer = _response(stream)
        assert status == 201, answer
        created = json.loads(answer)
        status, answer = _response(stream)
        assert status == 200 and json.loads(answer) == {"ok": True}
    with httpx.Client(base_url=served, headers=AUTH, timeout=10) as http_:
        call_id = created["calls"][0]["id"]
        assert http_.get(f"/v1/calls/{call_id}").json()["state"] == "queued"


def test_a_framed_body_cut_short_is_refused_and_the_connection_closed(served: str) -> None:
    body = _framed_submission(os.urandom(200_000))
    request = (b"POST /v1/calls HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
               + TEST_TOKEN.encode() + b"\r\nContent-Type: application/x-podfn-frames\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:150_000])
    sock = raw(served, request)
    with sock:
        sock.shutdown(socket.SHUT_WR)  # the client is gone inside the body
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_direct_body_takes_the_read_ahead_up_to_its_end_and_the_socket_after_it() -> None:
    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader

    from podfn_platform.worker import DirectBody

    body, after = os.urandom(300_000), b"GET /healthz HTTP/1.1\r\n\r\n"
    ours, theirs = socket.socketpair()
    ours.settimeout(10)  # a wrong count fails here, not hangs
    with ours, theirs:
        unreader = SocketUnreader(ours)
        unreader.unread(body[:1000])  # read ahead with the request's head
        reader = LengthReader(unreader, len(body))
        sender = threading.Thread(target=theirs.sendall, args=(body[1000:] + after,))
        sender.start()
        direct = DirectBody(Body(reader))
        got = bytearray(len(body) + 10)
        view, filled = memoryview(got), 0
        while n := direct.readinto(view[filled:filled + 65536]):
            filled += n
        sender.join()
        assert got[:filled] == body
        assert reader.length == 0 and direct.read(10) == b"", "nothing past the body"
        assert unreader.read(len(after)) == after, "the next request is left to gunicorn"


def test_direct_body_keeps_the_next_request_it_was_handed_with_the_head() -> None:
    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader

    from podfn_platform.worker import DirectBody

    body, after = b"x" * 5000, b"GET /healthz HTTP/1.1\r\n\r\n"
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    with ours, theirs:
        unreader = SocketUnreader(ours)
        unreader.unread(body + after)  # all of it came with the head
        reader = LengthReader(unreader, len(body))
        direct = DirectBody(Body(reader))
        assert direct.read(3000) + direct.read() == body
        assert direct.read() == b"" and not direct.failed
        assert unreader.read(len(after)) == after


@pytest.mark.parametrize(("content_type", "extra", "direct"), [
    ("application/x-podfn-frames", b"", True),
    ("Application/X-Podfn-Frames; v=1", b"", True),
    ("application/json", b"", False),
    ("multipart/form-data; boundary=x", b"", False),
    ("application/x-podfn-frames", b"Transfer-Encoding: chunked\r\n", False),
])
def test_which_requests_get_a_direct_body(content_type: str, extra: bytes,
                                          direct: bool) -> None:
    """As gunicorn parses them: framed bodies of known length only; and the request
    behind one parses as it should once its body is read."""
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    from podfn_platform.worker import DirectBody

    body = b"x" * 3000
    if extra:
        sized = f"{len(body):x}".encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    else:
        sized, extra = body, b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    raw_request = (b"POST /v1/calls HTTP/1.1\r\nHost: t\r\nContent-Type: "
                   + content_type.encode() + b"\r\n" + extra + b"\r\n" + sized
                   + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    with ours, theirs:
        theirs.sendall(raw_request)
        theirs.shutdown(socket.SHUT_WR)
        parser = RequestParser(Config(), ours, ("127.0.0.1", 1))
        request = next(parser)
        DirectBody.wrap(request)
        assert isinstance(request.body, DirectBody) is direct
        assert request.body.read() == body
        following = next(parser)
        assert (following.method, following.path) == ("GET", "/healthz")


def test_an_unread_framed_body_is_drained_and_the_next_request_answered(
        served: str) -> None:
    """A framed submission refused before its body is read (no token): gunicorn drains
    the body through DirectBody.read, and the request pipelined behind it is answered."""
    body = _framed_submission(os.urandom(20_000))
    request = (b"POST /v1/calls HTTP/1.1\r\nHost: t\r\n"
               b"Content-Type: application/x-podfn-frames\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
               + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    sock = raw(served, request)
    with sock, sock.makefile("rb") as stream:
        assert _response(stream)[0] == 401
        status, answer = _response(stream)
        assert status == 200 and json.loads(answer) == {"ok": True}


def test_a_half_sent_head_pipelined_behind_a_request_holds_no_thread(served: str) -> None:
    """The next request's bytes read ahead with the last one go through the event
    loop's head reader: a half-sent head there is closed after
    PODFN_HEADER_TIMEOUT_SECONDS, and holds none of the 4 request threads."""
    held = [raw(served, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                        b"GET /healthz HTTP/1.1\r\nHost: t\r\n") for _ in range(8)]
    try:
        for sock in held:
            with sock.makefile("rb") as stream:
                assert _response(stream)[0] == 200
        with httpx.Client(base_url=served, timeout=5) as http_:
            for _ in range(3):
                assert http_.get("/healthz").status_code == 200
        for sock in held:
            sock.settimeout(20)
            assert sock.recv(1) == b"", "closed after the header timeout"
    finally:
        for sock in held:
            sock.close()
