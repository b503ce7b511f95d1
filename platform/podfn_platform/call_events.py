"""One line per finished call, for the person watching `podfn dev`.

A terminal full of access-log lines (one per long-poll) says nothing about
what the calls did; this says what matters: which function, which call, how
it ended and how long it took. It listens for `podfn_final`, the
notification every final transition sends, and reads the call back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from podfn.errors import DatabaseError
from podfn_platform.database import Database, Listener, Row


def describe(row: Row) -> str:
    """`12:00:01  add  3f2a...  succeeded in 0.12 s` (failures: with the reason's first line)."""
    finished: datetime = row["finished_at"]
    began: datetime = row.get("started_at") or row["created_at"]
    line = (f"{finished.astimezone().strftime('%H:%M:%S')}  {row['function_name']}  "
            f"{row['id']}  {row['state']} in {(finished - began).total_seconds():.2f} s")
    reason = (row.get("reason") or "").strip()
    if row["state"] != "succeeded" and reason:
        line += f": {reason.splitlines()[0][:160]}"
    return line


class CallEvents:
    """Print `describe(call)` for each call that reaches a final state, while running."""

    def __init__(self, database_url: str, echo: Callable[[str], None]) -> None:
        self._db = Database(database_url, max_size=2, name="podfn-dev-events")
        self._echo = echo
        self._listener: Listener | None = None

    def start(self) -> CallEvents:
        self._db.open(wait=False)
        self._listener = Listener(self._db, ["podfn_final"], on_notify=self._final,
                                  on_reconnect=lambda: None).start()
        return self

    def _final(self, channel: str, call_id: str) -> None:
        try:
            row = self._db.one("get_call", {"id": call_id})
        except DatabaseError:
            return  # a line missed is better than a watcher that stops
        if row is not None and row["finished_at"] is not None:
            self._echo(describe(row))

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self._db.close()
