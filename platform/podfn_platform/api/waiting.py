"""Long-polling for results without polling Postgres.

One LISTEN connection per API process hears `podfn_final` (sent in the same
transaction that finishes a call) and `podfn_output` (the runtime stored
output or a generator's item, output.py) and wakes the requests waiting on
that id.
Every wait re-reads the database after arming itself, so a result that landed
before the wait began, or while the listening connection was down (the
listener wakes everyone when it reconnects), is still seen.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TypeVar

from podfn_platform.database import Database, Listener

T = TypeVar("T")

# While the listener is disconnected, waits re-read this often instead.
_DISCONNECTED_RECHECK = 1.0


class FinishWaiter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = defaultdict(set)
        self._listener: Listener | None = None
        self._draining = False

    def _ensure_listening(self) -> Listener:
        with self._lock:
            if self._listener is None:
                self._listener = Listener(
                    self._db, ["podfn_final", "podfn_output"], on_notify=self._notified,
                    on_reconnect=self._wake_all,
                ).start()
            return self._listener

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
        with self._lock:
            for event in self._waiting.get(call_id, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiting.values():
                for event in events:
                    event.set()

    def wait(self, ids: Sequence[str], timeout: float, fetch: Callable[[], list[T]]) -> list[T]:
        """`fetch()` as soon as it returns something, or after `timeout` seconds."""
        listener = self._ensure_listening()
        event = threading.Event()
        with self._lock:
            for call_id in ids:
                self._waiting[call_id].add(event)
        try:
            deadline = time.monotonic() + timeout
            while True:
                event.clear()
                rows = fetch()
                remaining = deadline - time.monotonic()
                if rows or remaining <= 0 or self._draining:
                    return rows
                if not listener.connected.is_set():
                    remaining = min(remaining, _DISCONNECTED_RECHECK)
                event.wait(remaining)
        finally:
            with self._lock:
                for call_id in ids:
                    events = self._waiting.get(call_id)
                    if events is not None:
                        events.discard(event)
                        if not events:
                            del self._waiting[call_id]
