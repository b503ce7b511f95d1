"""Kept-alive HTTP/1.1 connections of the standard library, for the requests on a call's path.

httpx is the client's HTTP library. Its layers (httpx, httpcore, h11) cost
~0.9 ms of the ~2 ms of client CPU a trivial `.remote` took, and measured
call by call, alternated in one stack, `.remote` took 1-1.5 ms longer with
them than with `http.client` (benchmarks/notes.md, issue 12, eighth round).
So the requests every `.remote`, `.spawn` and `.map` make, the submission
(waiting or not) and the `wait` long-poll, go over `http.client` here; every
other request, and the asyncio client, stay on httpx. So does every request when a
proxy is configured for the API's URL (HTTP_PROXY and its kin, which httpx
honours and this module does not implement): see `direct`.

A connection is reused while the server keeps it open. One the server closed
while it sat idle is found before it is reused (its socket reads as ready: the
server's FIN), and a reused connection that fails before any answer arrives is
replaced by a new one at once, once: every request sent here may be sent again
(a submission carries its Idempotency-Key).
"""

from __future__ import annotations

import contextlib
import http.client
import select
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import urlencode, urlsplit

# The most one read of an answer's body asks for.
READ_STEP = 1 << 20
# Failures of a reused connection that mean the server had closed it: sent again once.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
          ConnectionAbortedError)


class TransportError(Exception):
    """The connection failed, or the answer was cut short."""


def direct(url: str) -> bool:
    """Whether requests to `url` may go over these connections: http(s), and no proxy set
    for it in the environment (httpx would go through one)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    # (NO_PROXY, as httpx reads it; typeshed does not list this function.)
    bypass = vars(urllib.request)["proxy_bypass_environment"]
    return bool(bypass(parts.hostname, proxies))


class Reply:
    """An answer being read: its status, its content type, and its body."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.reason = response.reason
        self.content_type = response.getheader("Content-Type", "")
        self._response = response

    def pieces(self) -> Iterator[bytes]:
        """The body, READ_STEP bytes at a time. An answer cut short is a TransportError
        (http.client returns what came, without a word, when the peer closes early)."""
        while True:
            piece = self._response.read(READ_STEP)
            if not piece:
                if self._response.length:  # bytes announced that never came
                    raise TransportError(f"the answer ended {self._response.length} bytes "
                                         "short of its Content-Length")
                return
            yield piece

    def read(self) -> bytes:
        return b"".join(self.pieces())


class Connections:
    """Kept-alive connections to one API (`url`, its path included), shared by threads."""

    def __init__(self, url: str, headers: dict[str, str],
                 tls: Callable[[], ssl.SSLContext]) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self._headers = headers
        self._tls = tls
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @contextlib.contextmanager
    def post(self, path: str, *, params: dict[str, object] | None, headers: dict[str, str],
             body: Sequence[bytes | memoryview], timeout: float) -> Iterator[Reply]:
        """POST `body` (its pieces, sent one after another, never joined) and hand over the
        answer; the connection is kept for the next request if the answer was read whole."""
        target = self._base + path + (f"?{urlencode(params)}" if params else "")
        # (A body of one piece goes in the same send() as the headers.)
        sent = bytes(body[0]) if len(body) == 1 else body
        all_headers = {**self._headers, **headers,
                       "Content-Length": str(sum(len(piece) for piece in body))}
        idle = self._take()
        while True:
            conn = idle or self._connection(timeout)
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request("POST", target, body=sent, headers=all_headers)
                response = conn.getresponse()
                break
            except _STALE as exc:
                conn.close()
                if conn is not idle:
                    raise TransportError(str(exc) or type(exc).__name__) from exc
                idle = None  # closed by the server as it sat idle: a new one, once
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransportError(str(exc) or type(exc).__name__) from exc
        read_whole = False
        try:
            yield Reply(response)
            read_whole = response.isclosed()
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
        finally:
            if read_whole and not response.will_close:
                with self._lock:
                    self._idle.append(conn)
            else:
                conn.close()

    def _take(self) -> http.client.HTTPConnection | None:
        """An idle connection the server has not closed, if there is one."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if conn.sock is not None and not _readable(conn.sock.fileno()):
                return conn
            conn.close()  # closed by the server (or it sent what was not asked for)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=self._tls())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)


def _readable(fd: int) -> bool:
    """Whether `fd` has something to read now: on an idle connection, the server's FIN."""
    if hasattr(select, "poll"):  # (not on Windows; select() cannot take fds past 1023)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])
