"""The client's kept-alive connections (podfn/transport.py) against a server that misbehaves.

The server here is a raw socket that answers as a script says: it can close a
kept-alive connection while it sits idle, hang up after reading a request
without answering, or cut its answer short. None of those may lose a call or
hand the caller half an answer, and a connection the server closed must not
cost the caller the client's retry backoff.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podfn import transport
from podfn.errors import NotAuthorized, PlatformUnreachable
from podfn.http import APIClient

WAIT_ANSWER = json.dumps({"calls": [{"id": "c1", "state": "queued"}]}).encode()
Behaviour = Callable[[socket.socket, int], bool]  # (connection, request number) -> keep it


def _read_request(conn: socket.socket, *, body: bool = True) -> bytes:
    """One request's head and (unless not `body`) its body (by its Content-Length), or
    b"" at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = conn.recv(65536)
        if not got:
            return b""
        data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while body and len(rest) < length:
        rest += conn.recv(65536)
    return head


def _answer(conn: socket.socket, body: bytes = WAIT_ANSWER, *, length: int | None = None,
            close: bool = False) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body) if length is None else length}\r\n".encode()
                 + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body)


class ScriptedServer:
    """Serves each request by `behave(connection, n)` (n counts requests from 0); counts
    connections and keeps the request heads."""

    def __init__(self, behave: Behaviour) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.behave = behave
        self.connections = 0
        self.heads: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                head = _read_request(conn)
                if not head:
                    return
                with self._lock:
                    n = len(self.heads)
                    self.heads.append(head)
                if not self.behave(conn, n):
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(behave: Behaviour) -> ScriptedServer:
        servers.append(ScriptedServer(behave))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's retry sleeps, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr("podfn.http.time.sleep", slept.append)
    return slept


def test_requests_share_one_kept_alive_connection(serve: Callable[[Behaviour], ScriptedServer],
                                                  ) -> None:
    def keep(conn: socket.socket, n: int) -> bool:
        _answer(conn)
        return True

    server = serve(keep)
    with APIClient(server.url + "/podfn/", "tok") as client:
        for _ in range(2):
            assert [c["id"] for c in client.wait(["c1"], 0)] == ["c1"]
        client.wait(["c1"], 0, linger=0.5)
    assert server.connections == 1
    assert [head.split(b"\r\n")[0] for head in server.heads] == [
        b"POST /podfn/v1/calls/wait HTTP/1.1"] * 2 + [
        b"POST /podfn/v1/calls/wait?linger=0.5 HTTP/1.1"]
    assert b"authorization: bearer tok" in server.heads[0].lower()


def test_a_connection_closed_while_idle_is_replaced_without_a_retry(
        serve: Callable[[Behaviour], ScriptedServer], monkeypatch: pytest.MonkeyPatch) -> None:
    answered = threading.Event()

    def once_per_connection(conn: socket.socket, n: int) -> bool:
        _answer(conn)  # keep-alive, then hang up: the client sees a FIN on an idle socket
        answered.set()
        return False

    server = serve(once_per_connection)
    slept = _no_backoff(monkeypatch)
    with APIClient(server.url, None) as client:
        client.wait(["c1"], 0)
        client.wait(["c1"], 0)
    assert server.connections == 2 and len(server.heads) == 2 and slept == []


def test_a_kept_connection_hung_up_on_is_sent_again_at_once_on_a_new_one(
        serve: Callable[[Behaviour], ScriptedServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the idle check cannot see: the server closes the connection just as the
    request goes out on it."""
    def hang_up_on_the_second(conn: socket.socket, n: int) -> bool:
        if n == 1:
            return False  # read it, closed without a word
        _answer(conn)
        return True

    server = serve(hang_up_on_the_second)
    slept = _no_backoff(monkeypatch)
    with APIClient(server.url, None) as client:
        client.wait(["c1"], 0)
        assert [c["id"] for c in client.wait(["c1"], 0)] == ["c1"]
    assert server.connections == 2 and len(server.heads) == 3 and slept == []


def _asked_again(serve: Callable[[Behaviour], ScriptedServer], monkeypatch: pytest.MonkeyPatch,
                 bad: Callable[[socket.socket, int], None]) -> None:
    """Two bad answers (`bad`, then a hang-up), then a good one: the client takes neither
    bad one for the answer and asks twice more, with its backoff."""
    def behave(conn: socket.socket, n: int) -> bool:
        if n < 2:
            bad(conn, n)
            return False
        _answer(conn)
        return True

    server = serve(behave)
    slept = _no_backoff(monkeypatch)
    with APIClient(server.url, None) as client:
        assert [c["id"] for c in client.wait(["c1"], 0)] == ["c1"]
    assert len(server.heads) == 3 and len(slept) == 2


def test_an_answer_cut_short_is_asked_again_never_taken_whole(
        serve: Callable[[Behaviour], ScriptedServer], monkeypatch: pytest.MonkeyPatch) -> None:
    _asked_again(serve, monkeypatch, lambda conn, n: _answer(
        conn, WAIT_ANSWER[:10], length=len(WAIT_ANSWER), close=True))

    def always_cut(conn: socket.socket, n: int) -> bool:
        _answer(conn, WAIT_ANSWER[:10], length=len(WAIT_ANSWER), close=True)
        return False

    server = serve(always_cut)
    with APIClient(server.url, None) as client, \
            pytest.raises(PlatformUnreachable, match="short of its Content-Length"):
        client.wait(["c1"], 0)


def test_a_proxy_in_the_environment_sends_everything_through_httpx(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy",
                 "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert transport.direct("http://api.example:8000")
    assert not transport.direct("unix:///run/podfn.sock")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert transport.direct("http://api.example:8000")  # (for https only)
    assert not transport.direct("https://api.example")
    monkeypatch.setenv("ALL_PROXY", "http://proxy.example:3128")
    assert not transport.direct("http://api.example:8000")
    with APIClient("http://api.example:8000", None) as client:
        assert client._direct is None
    monkeypatch.setenv("NO_PROXY", "api.example")
    assert transport.direct("http://api.example:8000")


def test_threads_share_the_connections_without_mixing_answers(
        serve: Callable[[Behaviour], ScriptedServer]) -> None:
    def echo(conn: socket.socket, n: int) -> bool:
        _answer(conn, json.dumps({"calls": [{"id": f"c{n}", "state": "queued"}]}).encode())
        return True

    server = serve(echo)
    got: list[str] = []
    with APIClient(server.url, None) as client:
        def waits() -> None:
            for _ in range(20):
                got.extend(c["id"] for c in client.wait(["c1"], 0))

        threads = [threading.Thread(target=waits) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert sorted(got) == sorted(f"c{n}" for n in range(120))  # each answer read once
    assert server.connections <= 6


def test_an_answer_given_before_the_body_was_read_is_the_error_raised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server or ingress that refuses a large body from its headers alone (401 here, a
    413 alike) and hangs up: the send fails, and the answer is what the caller gets."""
    refusal = json.dumps({"error": {"code": "unauthorized", "message": "bad token"}}).encode()
    listener = socket.create_server(("127.0.0.1", 0))

    def refuse() -> None:
        conn, _ = listener.accept()
        with conn:
            _read_request(conn, body=False)
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(refusal)}\r\n".encode()
                         + b"Connection: close\r\n\r\n" + refusal)

    threading.Thread(target=refuse, daemon=True).start()
    slept = _no_backoff(monkeypatch)
    try:
        with APIClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "bad") as client, \
                pytest.raises(NotAuthorized, match="bad token"):
            client.submit(function_name="f", function=b"fn", args=[b"x" * (16 << 20)],
                          spec={}, versions={})
    finally:
        listener.close()
    assert slept == []  # not taken for a lost connection, so not sent again


def test_an_interim_or_lengthless_answer_is_not_taken_for_the_answer(
        serve: Callable[[Behaviour], ScriptedServer], monkeypatch: pytest.MonkeyPatch) -> None:
    # A 103, then an answer cut inside its headers (http.client takes EOF for their end).
    _asked_again(serve, monkeypatch, lambda conn, n: conn.sendall(
        b"HTTP/1.1 103 Early Hints\r\n\r\n" if n == 0 else b"HTTP/1.1 200 OK\r\nContent-Ty"))


def test_idle_connections_are_bounded_and_a_closed_client_sends_nothing(
        serve: Callable[[Behaviour], ScriptedServer], monkeypatch: pytest.MonkeyPatch) -> None:
    def keep(conn: socket.socket, n: int) -> bool:
        _answer(conn)
        return True

    server = serve(keep)
    monkeypatch.setattr(transport, "MAX_IDLE", 2)
    client = APIClient(server.url, None)
    barrier = threading.Barrier(4)

    def wait_together() -> None:
        barrier.wait()
        client.wait(["c1"], 0)

    threads = [threading.Thread(target=wait_together) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert client._direct is not None and len(client._direct._idle) <= 2
    monkeypatch.setattr(transport, "IDLE_SECONDS", -1.0)  # every idle one has expired
    client.wait(["c1"], 0)
    assert len(client._direct._idle) == 1  # (the one just used)
    client.close()
    assert client._direct._idle == []
    with pytest.raises(RuntimeError, match="closed"):
        client.wait(["c1"], 0)


def test_the_url_decides_the_port_the_path_and_whether_to_go_direct(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def tls() -> Any:
        raise AssertionError("not asked for")

    assert transport.Connections("http://[::1]", {}, tls)._port == 80  # (not split at ':')
    assert transport.Connections("https://[::1]/", {}, tls)._port == 443
    assert transport.Connections("http://h/my api/", {}, tls)._base == "/my%20api"
    assert not transport.direct("http://user:pw@api.example")  # httpx sends them
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", ".example.com")
    assert not transport.direct("http://example.com")  # (httpx would use the proxy)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_never_shares_its_parents_connection(
        serve: Callable[[Behaviour], ScriptedServer]) -> None:
    def keep(conn: socket.socket, n: int) -> bool:
        _answer(conn)
        return True

    server = serve(keep)
    with APIClient(server.url, None) as client:
        client.wait(["c1"], 0)  # one connection, now idle
        pid = os.fork()
        if pid == 0:  # the child: its own connection, or exit 1
            code = 1
            try:
                code = 0 if [c["id"] for c in client.wait(["c1"], 0)] == ["c1"] else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert server.connections == 2  # the child's own
        client.wait(["c1"], 0)
        assert server.connections == 2  # and the parent's, still open, reused
