"""Following a call while it runs: its output line by line, a generator's items.

Both read from where they are (an offset into the attempt's output, an item
index) and long-poll the API for what follows, so a line or an item reaches
the caller within about a second of the runtime's storing it (it stores
every half second), and following costs what the call produced, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from podfn.serialization import loads

if TYPE_CHECKING:
    from podfn.http import APIClient

# Seconds each long-poll may wait for something new (the server caps it too).
POLL_SECONDS = 20.0


@dataclass(frozen=True)
class LogLine:
    """One line of a call's output ("stdout" or "stderr"), its newline kept (the last
    line of a stream may lack one); `at` is when the runtime stored it."""

    stream: str
    text: str
    at: datetime | None
    attempt: int

    def __str__(self) -> str:
        return self.text


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def follow_lines(client: APIClient, call_id: str, *, follow: bool = True) -> Iterator[LogLine]:
    """The call's output as lines, as they are written, until the call ends (or, with
    `follow=False`, until what is stored so far is read). If the call is retried, the
    next attempt's output follows (its lines carry their attempt)."""
    attempt: int | None = None
    offset = 0
    partial: dict[str, tuple[str, datetime | None]] = {}
    while True:
        body = client.logs_from(call_id, offset, attempt=attempt,
                                wait=POLL_SECONDS if follow else 0.0)
        attempt = int(body["attempt"])
        for chunk in body["chunks"]:
            stream, at = chunk["stream"], _when(chunk.get("at"))
            before, first_at = partial.pop(stream, ("", at))
            lines = (before + chunk["data"]).split("\n")
            for i, line in enumerate(lines[:-1]):
                yield LogLine(stream, line + "\n", first_at if i == 0 else at, attempt)
            if lines[-1]:
                partial[stream] = (lines[-1], first_at if len(lines) == 1 else at)
        offset = int(body["next_offset"])
        if body["done"] or (not follow and not body["chunks"]):
            for stream, (text, at) in partial.items():
                yield LogLine(stream, text, at, attempt)
            partial.clear()
            if int(body["current_attempt"]) == attempt or not body["done"]:
                return
            attempt, offset = int(body["current_attempt"]), 0


def follow_items(client: APIClient, call_id: str) -> Iterator[Any]:
    """A generator call's items, unpickled, in order, as they are stored; the call's
    own failure is raised after the items it yielded (by `finish`)."""
    start = 0
    while True:
        body = client.items_from(call_id, start, wait=POLL_SECONDS)
        for item in body["items"]:
            yield loads(item["data"])
        start = int(body["next"])
        if body["done"]:
            return
