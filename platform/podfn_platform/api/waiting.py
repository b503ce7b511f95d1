"""Long-polling for results without polling Postgres.

One LISTEN connection per API process hears `podfn_final` (sent in the same
transaction that finishes a call) and `podfn_output` (the runtime stored
output or a generator's item, output.py) and wakes the requests waiting on
that id. It also hears `podfn_tokens` (a token was revoked), for the token
cache of api/auth.py.
Every wait re-reads the database after arming itself, so a result that landed
before the wait began, or while the listening connection was down (the
listener wakes everyone when it reconnects), is still seen.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from podfn_platform.database import Database, Listener

T = TypeVar("T")

# While the listener is disconnected, waits re-read this often instead.
_DISCONNECTED_RECHECK = 1.0
TOKENS_CHANNEL = "podfn_tokens"
FINAL_CHANNEL = "podfn_final"


class FinishWaiter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._waiting: dict[str, set[Watch]] = defaultdict(set)
        self._listener: Listener | None = None
        self._draining = False
        self._on_tokens: list[Callable[[], None]] = []

    def _ensure_listening(self) -> Listener:
        with self._lock:
            if self._listener is None:
                self._listener = Listener(
                    self._db, [FINAL_CHANNEL, "podfn_output", TOKENS_CHANNEL],
                    on_notify=self._notified, on_reconnect=self._wake_all,
                ).start()
            return self._listener

    def listening(self) -> bool:
        """Whether notifications are heard now (the listener is started if it was not)."""
        return self._ensure_listening().connected.is_set()

    def on_tokens_changed(self, callback: Callable[[], None]) -> None:
        """Call `callback` when a token is revoked, and whenever the listener connects or
        loses its connection (a revocation may have gone unheard)."""
        self._on_tokens.append(callback)

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener:
            listener.stop()

    def drain(self) -> None:
        """The process is stopping: every wait answers now with what it has (a client
        whose wait comes back empty asks again, reaching a process that stays)."""
        self._draining = True
        self._wake_all()

    def _notified(self, channel: str, call_id: str) -> None:
        if channel == TOKENS_CHANNEL:
            for callback in self._on_tokens:
                callback()
            return
        with self._lock:
            for watch in self._waiting.get(call_id, ()):
                if channel == FINAL_CHANNEL:  # (podfn_output: a running call printed)
                    watch.heard.add(call_id)
                watch.event.set()

    def _wake_all(self) -> None:
        for callback in self._on_tokens:
            callback()
        with self._lock:
            for watches in self._waiting.values():
                for watch in watches:
                    watch.event.set()

    def wait(self, ids: Sequence[str], timeout: float, fetch: Callable[[], list[T]]) -> list[T]:
        """`fetch()` as soon as it returns something, or after `timeout` seconds."""
        with self.watching() as watch:
            watch.add(ids)
            return watch.wait(timeout, fetch)

    @contextmanager
    def watching(self) -> Iterator[Watch]:
        """A wait whose ids are added as they become known: a submission adds the ids of
        the calls it creates before its transaction commits, so no finish can come
        before the wait is armed and its first look at the database can be skipped."""
        watch = Watch(self, self._ensure_listening())
        try:
            yield watch
        finally:
            watch.close()


class Watch:
    """Some calls one request waits for (FinishWaiter.watching)."""

    def __init__(self, waiter: FinishWaiter, listener: Listener) -> None:
        self._waiter = waiter
        self._listener = listener
        self.event = threading.Event()
        self.heard: set[str] = set()  # ids announced finished (under the waiter's lock)
        self._ids: list[str] = []

    def add(self, ids: Sequence[str]) -> None:
        waiter = self._waiter
        with waiter._lock:
            for call_id in ids:
                waiter._waiting[call_id].add(self)
        self._ids.extend(ids)

    def wait(self, timeout: float, fetch: Callable[[], list[T]], *,
             looked: bool = False, linger: float = 0.0,
             id_of: Callable[[T], str] | None = None) -> list[T]:
        """`fetch()` as soon as it returns something, or after `timeout` seconds.

        `looked`: nothing can have finished unseen since the ids were added (the
        caller fetched after adding them, or added them before their rows were
        committed), so the first fetch waits for a wake-up. That is safe with the
        listener down too: it wakes every registered wait when it reconnects.

        `linger` (with `id_of`, a fetched row's call id): once something has
        finished, wait up to that many seconds more (within `timeout`) for the
        others, unless every other id is announced finished sooner, and fetch
        again: a map whose calls finish one by one gets them several to a request
        instead of one.
        """
        deadline = time.monotonic() + timeout
        while True:
            if looked:
                looked = False
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._waiter._draining:
                    return fetch()
            else:
                self.event.clear()
                with self._waiter._lock:
                    self.heard.clear()  # from here on: what finished after this look began
                rows = fetch()
                remaining = deadline - time.monotonic()
                if rows:
                    return self.linger(rows, min(linger, remaining), fetch, id_of)
                if remaining <= 0 or self._waiter._draining:
                    return rows
            if not self._listener.connected.is_set():
                remaining = min(remaining, _DISCONNECTED_RECHECK)
            self.event.wait(remaining)

    def linger(self, rows: list[T], seconds: float, fetch: Callable[[], list[T]],
               id_of: Callable[[T], str] | None) -> list[T]:
        """`rows` (what a look found finished), or, if others of the ids are announced
        finished (podfn_final) within `seconds`, a new look once all of them are or the
        time is up. Not while the listener is down: nothing could be announced."""
        if id_of is None or seconds <= 0 or not self._listener.connected.is_set():
            return rows
        others = set(self._ids).difference(map(id_of, rows))
        if not others:
            return rows
        settle = time.monotonic() + seconds
        while True:
            self.event.clear()  # before the checks: a wake-up after them is kept
            with self._waiter._lock:
                heard = others & self.heard
            remaining = settle - time.monotonic()
            if heard == others or remaining <= 0 or self._waiter._draining:
                break
            self.event.wait(remaining)
        if not heard:
            return rows  # nothing more was announced: the first look stands
        return fetch() or rows

    def close(self) -> None:
        waiter = self._waiter
        with waiter._lock:
            for call_id in self._ids:
                watches = waiter._waiting.get(call_id)
                if watches is not None:
                    watches.discard(self)
                    if not watches:
                        del waiter._waiting[call_id]
