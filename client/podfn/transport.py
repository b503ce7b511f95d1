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
import os
import select
import ssl
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import quote, urlencode, urlsplit

# The most one read of an answer's body asks for.
READ_STEP = 1 << 20
# Idle connections kept, and for how long (httpx's defaults: 20 and 5 s; the API's own
# keep-alive is 5 s, podfn_platform/gunicorn_conf.py).
MAX_IDLE = 20
IDLE_SECONDS = 4.0
# Failures of a reused connection that mean the server had closed it: sent again once.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
          ConnectionAbortedError)


class TransportError(Exception):
    """The connection failed, or the answer was cut short."""


def direct(url: str) -> bool:
    """Whether requests to `url` may go over these connections: http(s), no user and
    password in it, and no proxy for it (httpx would go through one, or send the
    credentials). Where a proxy is set, only a `NO_PROXY` of `*` or of exactly the URL's
    host goes direct: httpx bypasses the proxy for those too, while its other rules
    (domain suffixes, ports, schemes) differ from the standard library's."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.username is not None or parts.password is not None:
        return False
    proxies = urllib.request.getproxies()  # (the environment; the system's on macOS, Windows)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    bypass = {entry.strip().lower() for entry in proxies.get("no", "").split(",")}
    return "*" in bypass or parts.hostname.lower() in bypass


class Reply:
    """An answer being read: its status, its content type, and its body."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        if response.status < 200:  # (http.client skips 100 Continue, not 102 or 103)
            raise TransportError(f"an interim answer ({response.status} {response.reason}) "
                                 "where the answer was due")
        if response.length is None and not response.chunked:
            # The API always says how long its answer is; one that does not was cut
            # inside its headers (http.client takes EOF there for their end).
            raise TransportError("an answer without Content-Length or chunked encoding")
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
    """Kept-alive connections to one API (`url`, its path included), shared by threads.

    Not across a fork: a child process that reused its parent's idle connection would
    share one socket with it, and either could read the other's answer. A forked child
    starts with none (`_forget_in_child`).
    """

    def __init__(self, url: str, headers: dict[str, str],
                 tls: Callable[[], ssl.SSLContext]) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        self._https = parts.scheme == "https"
        # (An explicit port: http.client would split an IPv6 literal's own colons.)
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = quote(parts.path.rstrip("/"), safe="/%")
        self._headers = headers
        self._tls = tls
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # (since when)
        self._lock = threading.Lock()
        self._closed = False
        _EVERY.add(self)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when their answer is read."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _since in idle:
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
            conn = idle
            try:
                conn = conn or self._connection(timeout)
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                response = _exchange(conn, target, sent, all_headers)
                break
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # (ValueError: a URL http.client cannot send)
                if conn is not None:
                    conn.close()
                if conn is not None and conn is idle and isinstance(exc, _STALE):
                    idle = None  # closed by the server as it sat idle: a new one, once
                    continue
                raise TransportError(str(exc) or type(exc).__name__) from exc
        read_whole = False
        try:
            yield Reply(response)
            read_whole = response.isclosed()
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
        finally:
            self._put(conn, keep=read_whole and not response.will_close)

    def _put(self, conn: http.client.HTTPConnection, *, keep: bool) -> None:
        """Back among the idle connections, or closed (not kept, the client closed, or
        MAX_IDLE idle already)."""
        with self._lock:
            if keep and not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _take(self) -> http.client.HTTPConnection | None:
        """An idle connection the server has not closed, if there is one; those idle for
        over IDLE_SECONDS (the API's keep-alive is shorter) are closed on the way."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the API client has been closed")
            now = time.monotonic()
            expired = [conn for conn, since in self._idle if now - since > IDLE_SECONDS]
            self._idle = [(conn, since) for conn, since in self._idle
                          if now - since <= IDLE_SECONDS]
        for conn in expired:
            conn.close()
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn, _since = self._idle.pop()
            if conn.sock is not None and not _readable(conn.sock.fileno()):
                return conn
            conn.close()  # closed by the server (or it sent what was not asked for)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=self._tls())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)


_EVERY: weakref.WeakSet[Connections] = weakref.WeakSet()


def _forget_in_child() -> None:
    """In a forked child: drop every inherited idle connection. Closing the child's copy
    of a socket leaves the parent's connection open (the parent holds its own
    descriptor), so the parent carries on with it."""
    for connections in list(_EVERY):
        connections._lock = threading.Lock()  # (another thread may have held it at the fork)
        idle, connections._idle = connections._idle, []
        for conn, _since in idle:
            conn.close()


if hasattr(os, "register_at_fork"):  # (not on Windows, which does not fork)
    os.register_at_fork(after_in_child=_forget_in_child)


def _exchange(conn: http.client.HTTPConnection, target: str,
              body: bytes | Sequence[bytes | memoryview],
              headers: dict[str, str]) -> http.client.HTTPResponse:
    """Send the request and read the answer's head. A server may answer before it has
    read the body (a 413 for a body over its limit, a 401) and close: the send then
    fails, and the answer it left is what the caller needs, not the broken pipe."""
    try:
        conn.request("POST", target, body=body, headers=headers)
    except OSError as sending:
        if conn.sock is None:  # (never connected)
            raise
        try:
            return conn.getresponse()
        except (OSError, http.client.HTTPException):
            raise sending from None
    return conn.getresponse()


def _readable(fd: int) -> bool:
    """Whether `fd` has something to read now: on an idle connection, the server's FIN."""
    if hasattr(select, "poll"):  # (not on Windows; select() cannot take fds past 1023)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])
