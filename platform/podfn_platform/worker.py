"""The API's gunicorn worker: gthread, with headers read off-thread and long-polls apart.

With stock gthread every connection holds one of the worker's request
threads while its headers arrive and while its long-poll waits. So 16
long-polls (workers x threads) or 10 sockets sending their headers a byte at
a time made `/healthz` time out for everyone. This worker changes three
things and keeps the rest of gthread (keep-alive, graceful stop, limits):

1. Headers are read by the worker's event loop, without a thread: a
   connection gets a thread only once its request line and headers are all
   in (or it sent more than a request's headers may hold, for the parser to
   refuse). A connection whose headers are not complete within
   PODFN_HEADER_TIMEOUT_SECONDS of its first byte being awaited is closed.
   A request that arrived with the one before it (pipelined, read ahead with
   its body) goes through the same check, not straight to a thread.
2. Requests that wait by design (POST /v1/calls/wait, GET .../result?wait=,
   POST .../invoke, a submission with ?wait=) run on their own pool of
   PODFN_LONGPOLL_THREADS threads, so the PODFN_THREADS request threads
   always serve health checks, submits and reads. A long-poll holds no database connection while it waits.
3. A framed body (our payloads: a submission, a deploy) of known length is
   read straight off the socket into the buffers the view gives
   (`DirectBody`): gunicorn's body reader passes every byte through three
   buffers, which cost 3-5 ms of CPU per MB against 0.5 ms for `recv_into`
   (benchmarks/notes.md, issue 12, fifth round).

TLS is terminated in front of the API (the chart's ingress); a worker
configured for TLS keeps gthread's own behaviour. It builds on the gthread
worker of the gunicorn release pinned in setup.cfg.
"""

from __future__ import annotations

import contextlib
import errno
import io
import re
import selectors
import socket
import time
from concurrent import futures
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from podfn import frames

# What a request's line and headers may hold in all (gunicorn's defaults:
# limit_request_line 4094 + limit_request_fields 100 x limit_request_field_size 8190).
MAX_HEAD_BYTES = 4096 + 100 * 8192
_LONG_POLL_PATHS = (
    ("POST", re.compile(r"^/v1/calls/wait/?$")),
    ("GET", re.compile(r"^/v1/calls/[^/]+/result/?$")),
    ("POST", re.compile(r"^/v1/functions/[^/]+/invoke/?$")),
)
# Submissions wait only when asked to (`?wait=S`, issue 12: `.remote(x)` in one request).
_WAITING_IF_ASKED = (
    ("POST", re.compile(r"^/v1/calls/?$")),
    ("POST", re.compile(r"^/v1/functions/[^/]+/calls/?$")),
)
_NO_WAIT = re.compile(r"(^|&)wait=0*(\.0*)?(&|$)")
_WAIT = re.compile(r"(^|&)wait=")
# The most a DirectBody's `read` asks the socket for at once.
READ_STEP = 1 << 20


@dataclass
class Tuning:
    """Set in the master before the workers fork (see `configure`)."""

    longpoll_threads: int = 64
    header_timeout_seconds: float = 10.0


TUNING = Tuning()


def configure(longpoll_threads: int, header_timeout_seconds: float) -> None:
    """The worker's settings (from PODFN_LONGPOLL_THREADS, PODFN_HEADER_TIMEOUT_SECONDS)."""
    TUNING.longpoll_threads = longpoll_threads
    TUNING.header_timeout_seconds = header_timeout_seconds


def is_long_poll(head: bytes) -> bool:
    """Whether the request whose head (request line first) this is may wait by design."""
    line = head.lstrip(b"\r\n").split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3:
        return False
    method = parts[0].decode("latin-1")
    path, _, query = parts[1].decode("latin-1").partition("?")
    for wanted, pattern in _LONG_POLL_PATHS:
        if method == wanted and pattern.match(path):
            # An explicit wait=0 answers at once (invoke waits by default).
            return not _NO_WAIT.search(query)
    for wanted, pattern in _WAITING_IF_ASKED:
        if method == wanted and pattern.match(path):
            return bool(_WAIT.search(query)) and not _NO_WAIT.search(query)
    return False


class DirectBody(io.RawIOBase):
    """A request body of known length read with `recv_into` straight into the caller's
    buffer. It first hands out what gunicorn read ahead with the request's head (up
    to the body's end: what lies past it is the next request's, and stays with
    gunicorn), and keeps gunicorn's own reader's count of what is left in step, so
    that the connection's next request starts where it should. The request's
    parser drains what the application left unread through `read`, as it does
    gunicorn's body. A raw stream (`readline`, iteration: a whole `wsgi.input`)."""

    def __init__(self, body: Body) -> None:
        super().__init__()
        reader = body.reader
        unreader = reader.unreader
        ahead = unreader.buf.getvalue()
        mine = ahead[:reader.length]
        unreader.buf = io.BytesIO()
        unreader.buf.write(ahead[len(mine):])
        reader.length -= len(mine)
        self._held = body.buf.getvalue() + mine  # (taken off its reader before now)
        self._offset = 0
        self._reader = reader
        self._sock: socket.socket = unreader.sock
        self.failed = False  # read by gunicorn's parser: the connection is not reused

    @classmethod
    def wrap(cls, req: Any) -> None:
        """Give `req` a DirectBody if its body is framed and of known length."""
        body = req.body
        if not isinstance(body, Body) or not isinstance(body.reader, LengthReader) \
                or type(body.reader.unreader) is not SocketUnreader:
            return
        kind = next((value for name, value in req.headers if name == "CONTENT-TYPE"), "")
        if kind.split(";", 1)[0].strip().lower() == frames.MEDIA_TYPE:
            req.body = cls(body)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._offset < len(self._held):
            n = min(len(view), len(self._held) - self._offset)
            view[:n] = self._held[self._offset:self._offset + n]
            self._offset += n
            return n
        want = min(len(view), self._reader.length)
        if want <= 0:
            return 0
        try:
            got = self._sock.recv_into(view, want)
        except OSError:
            self.failed = True
            raise
        if not got:  # the client went away inside the body
            self.failed = True
            return 0
        self._reader.length -= got
        return got

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (all that is left: -1 or None), in steps of at most
        READ_STEP: nothing is allocated for bytes that have not arrived."""
        left = len(self._held) - self._offset + self._reader.length
        size = left if size is None or size < 0 else min(size, left)
        out = bytearray()
        while len(out) < size:
            step = bytearray(min(size - len(out), READ_STEP))
            got = self.readinto(step)
            if not got:
                break
            out += memoryview(step)[:got]
        return bytes(out)


class _Conn(TConn):  # type: ignore[misc]
    head: bytearray
    deadline: float


class PodfnWorker(ThreadWorker):  # type: ignore[misc]
    """gthread with an off-thread header read and a separate long-poll pool."""

    def init_process(self) -> None:
        self.head_conns: dict[_Conn, None] = {}  # in the order their deadlines fall
        self.lpool = futures.ThreadPoolExecutor(max_workers=TUNING.longpoll_threads,
                                                thread_name_prefix="podfn-longpoll")
        super().init_process()

    # -- reading heads on the event loop -------------------------------------

    def accept(self, listener: socket.socket) -> None:
        if self.cfg.is_ssl:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())
        self._await_head(conn)

    def on_client_socket_readable(self, conn: _Conn, client: socket.socket) -> None:
        """A kept-alive connection has bytes: read its next request's head here too."""
        if self.cfg.is_ssl:
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)
        self._read_head(conn, client)

    def _await_head(self, conn: _Conn) -> None:
        conn.sock.setblocking(False)
        conn.head = bytearray()
        conn.deadline = time.monotonic() + TUNING.header_timeout_seconds
        self.head_conns[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _drop_head_conn(self, conn: _Conn) -> None:
        self.head_conns.pop(conn, None)
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def _read_head(self, conn: _Conn, _client: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_head_conn(conn)
            return
        if not data:  # closed before a whole head arrived
            self._drop_head_conn(conn)
            return
        conn.head += data
        self._dispatch_if_whole(conn)

    def _dispatch_if_whole(self, conn: _Conn) -> None:
        """Hand the connection to a thread once its head is all in (or too large)."""
        head = bytes(conn.head)
        if b"\r\n\r\n" not in head.lstrip(b"\r\n") and len(head) <= MAX_HEAD_BYTES:
            return
        # Complete (or too large, for the parser to refuse): now a thread may take it.
        self.head_conns.pop(conn, None)
        self.poller.unregister(conn.sock)
        conn.sock.setblocking(True)
        conn.init()
        conn.parser.unreader.unread(head)
        conn.data_ready = True
        pool = self.lpool if is_long_poll(head) else self.tpool
        future = pool.submit(self.handle, conn)
        future.add_done_callback(
            lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def enqueue_req(self, conn: _Conn) -> None:
        """gthread's path for a kept-alive connection whose next request was read ahead
        with the last one (pipelined, or behind a drained body): those bytes go
        through the same head check as bytes off the socket (its timeout, the
        long-poll pool), not straight to a request thread."""
        if self.cfg.is_ssl or conn.parser is None:
            super().enqueue_req(conn)
            return
        ahead = conn.parser.unreader.take_buffered()
        self._await_head(conn)
        conn.head += ahead
        self._dispatch_if_whole(conn)

    def handle_request(self, req: Any, conn: _Conn) -> bool:
        if not self.cfg.is_ssl:
            DirectBody.wrap(req)
        return bool(super().handle_request(req, conn))

    def murder_pending(self) -> None:
        """gthread's expiry of idle connections, and of heads that took too long."""
        super().murder_pending()
        now = time.monotonic()
        expired = [c for c in self.head_conns if c.deadline <= now]
        for conn in expired:
            self.log.debug("closing %s: no complete request head within %.1fs", conn.client,
                           TUNING.header_timeout_seconds)
            self._drop_head_conn(conn)

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: stop as gthread does, and let long-polls answer now instead of
        holding the shutdown for up to the graceful timeout."""
        super().handle_exit(sig, frame)
        drain = getattr(self.wsgi, "extensions", {}).get("podfn.drain")
        if callable(drain):
            drain()

    def handle_quit(self, sig: Any, frame: Any) -> None:
        self.lpool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    def run(self) -> None:
        try:
            super().run()
        finally:
            for conn in list(self.head_conns):
                self._drop_head_conn(conn)
            self.lpool.shutdown(wait=False)
