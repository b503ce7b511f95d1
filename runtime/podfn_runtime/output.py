"""A call's output on its way to Postgres: appended chunks with offsets.

`Output` receives what the capture read (capture.py) and keeps two things:
chunks not yet stored, each at its offset in the attempt's combined output,
and the tail of each stream for the stdout/stderr columns, written when the
call ends if the chunks could not hold everything. `OutputWriter` appends
the pending chunks about every FLUSH_SECONDS through the protocol's
`append_output`, so following a call costs what it printed, once, instead
of rewriting the whole text each time.

The store is capped: after MAX_STORED_CHARS characters one marker chunk says
the rest was dropped (the database function refuses chunks past the cap
too). Only then are the stdout/stderr columns written at the end, with the
last MAX_CAPTURED_CHARS of each stream and the older marker, as before;
otherwise they stay empty and readers of the whole text get the chunks put
together (the API's get_logs query), so the output is stored once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from podfn_runtime.capture import start_thread
from podfn_runtime.database import RuntimeDatabase, RuntimeDatabaseError

log = logging.getLogger("podfn.runtime")

FLUSH_SECONDS = 0.5
# What each of the stdout/stderr columns keeps at most (the tail).
MAX_CAPTURED_CHARS = 1 << 20
# What the chunks of one attempt hold at most (the head), both streams together;
# migration 0007's append_output refuses more (plus room for the marker).
MAX_STORED_CHARS = 2 * MAX_CAPTURED_CHARS


class _Tail:
    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._size = 0
        self._dropped = 0

    def add(self, text: str) -> None:
        self._chunks.append(text)
        self._size += len(text)
        while self._size > MAX_CAPTURED_CHARS and len(self._chunks) > 1:
            dropped = self._chunks.pop(0)
            self._size -= len(dropped)
            self._dropped += len(dropped)

    def text(self) -> str:
        body = "".join(self._chunks)
        dropped = self._dropped
        if len(body) > MAX_CAPTURED_CHARS:
            dropped += len(body) - MAX_CAPTURED_CHARS
            body = body[-MAX_CAPTURED_CHARS:]
        if dropped:
            return f"[podfn: {dropped} earlier characters dropped]\n{body}"
        return body


Chunk = tuple[str, int, str]  # (stream, offset, data)


class Output:
    """What the call wrote: pending chunks for the database, tails for the columns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tails = {"stdout": _Tail(), "stderr": _Tail()}
        self._pending: list[tuple[str, int, list[str]]] = []
        self._offset = 0
        self._capped = False
        self._on_first: Callable[[], None] | None = None

    def when_written(self, hook: Callable[[], None] | None) -> None:
        """Call `hook` (once) when the call first writes something (None: never)."""
        with self._lock:
            self._on_first = hook

    def add(self, stream: str, text: str) -> None:
        with self._lock:
            hook, self._on_first = self._on_first, None
        if hook is not None:
            hook()
        with self._lock:
            self._tails[stream].add(text)
            if self._capped or not text:
                return
            room = MAX_STORED_CHARS - self._offset
            if len(text) > room:
                text = text[:room] + (f"\n[podfn: output past {MAX_STORED_CHARS} characters "
                                      "is not stored; the call's log has all of it]\n")
                self._capped = True
            # Consecutive pieces of one stream make one chunk (joined once, in take).
            if self._pending and self._pending[-1][0] == stream:
                self._pending[-1][2].append(text)
            else:
                self._pending.append((stream, self._offset, [text]))
            self._offset += len(text)

    def take(self) -> list[Chunk]:
        with self._lock:
            pending, self._pending = self._pending, []
        return [(stream, offset, "".join(pieces)) for stream, offset, pieces in pending]

    def give_back(self, chunks: list[Chunk]) -> None:
        """Chunks that could not be stored go first next time (at the same offsets)."""
        with self._lock:
            self._pending[:0] = [(stream, offset, [data]) for stream, offset, data in chunks]

    @property
    def capped(self) -> bool:
        """True once output went past what the chunks store."""
        with self._lock:
            return self._capped

    @property
    def stdout(self) -> str:
        with self._lock:
            return self._tails["stdout"].text()

    @property
    def stderr(self) -> str:
        with self._lock:
            return self._tails["stderr"].text()


class OutputWriter:
    """Appends an `Output`'s pending chunks to the call, in order."""

    def __init__(self, db: RuntimeDatabase, call_id: str, attempt: int, output: Output) -> None:
        self._db = db
        self._call_id = call_id
        self._attempt = attempt
        self._output = output
        self._stale = False
        self._lock = threading.Lock()  # one flush at a time keeps chunks in order

    def flush(self, *, retry: bool) -> None:
        """Store what is pending; `retry=False` for periodic flushes (the next one retries)."""
        with self._lock:
            chunks = self._output.take()
            if self._stale:
                return
            for i, (stream, offset, data) in enumerate(chunks):
                params = {"id": self._call_id, "attempt": self._attempt, "stream": stream,
                          "offset": offset, "data": data}
                try:
                    if retry:
                        written = self._db.transition("append_output", **params)
                    else:
                        written = self._db.try_once("append_output", **params)
                except RuntimeDatabaseError:
                    self._output.give_back(chunks[i:])
                    raise
                if written is None:
                    log.info("call %s moved on from attempt %d; its output is no longer "
                             "stored", self._call_id, self._attempt)
                    self._stale = True
                    return

    @contextmanager
    def periodically(self) -> Iterator[None]:
        """Flush every FLUSH_SECONDS during the block, from the call's first output on
        (a call that writes nothing, as most short ones, starts no thread), on the
        runtime's one flusher thread (a thread started and joined per call cost more
        than a trivial call)."""
        lock = threading.Lock()  # the reader thread's first write against the block's end
        followed: list[_Flusher] = []
        ended = False

        def start() -> None:
            with lock:
                if not followed and not ended:
                    followed.append(_the_flusher())
                    followed[0].follow(self)

        self._output.when_written(start)
        try:
            yield
        finally:
            self._output.when_written(None)
            with lock:
                ended = True
                for flusher in followed:
                    flusher.follow(None)


class _Flusher:
    """Flushes the writer of the call running now, every FLUSH_SECONDS."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()  # held while flushing: `follow` waits for it
        self._writer: OutputWriter | None = None
        self._changed = threading.Event()
        start_thread(self._run, "podfn-output")

    def follow(self, writer: OutputWriter | None) -> None:
        """Flush `writer` from now on (None: nothing); returns once no flush of the
        previous writer is under way."""
        with self._lock:
            self._writer = writer
        self._changed.set()

    def _run(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            with self._lock:
                if self._writer is None:
                    continue
            deadline = time.monotonic() + FLUSH_SECONDS
            # Until the writer changes (then its own period starts, above).
            while not self._changed.wait(max(0.0, deadline - time.monotonic())):
                with self._lock:
                    writer = self._writer
                    if writer is not None:
                        try:
                            writer.flush(retry=False)
                        except RuntimeDatabaseError as exc:
                            log.warning("could not store output (will try again): %s", exc)
                deadline = time.monotonic() + FLUSH_SECONDS


_flusher: _Flusher | None = None


def _the_flusher() -> _Flusher:
    """The flusher thread (a new one in a forked child: threads do not survive a fork)."""
    global _flusher
    if _flusher is None or _flusher.pid != os.getpid():
        _flusher = _Flusher()
    return _flusher
