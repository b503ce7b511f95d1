"""What the controller needs from a launcher: start attempts, stop them, report what became of them.

A launcher runs one attempt of one call somewhere (a local process, a pod).
It knows nothing of Postgres: it reports what happened to each attempt as an
`Exit`, and the controller turns that into one guarded state transition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Attempt:
    call_id: str
    attempt: int
    function_name: str
    spec: dict[str, Any]
    client_python: str
    state: str = "launching"
    launched_at: datetime | None = None
    # What the attempt's runtime gets besides the runtime role's database URL
    # (environment.py): its id, its secret, the API and its nested-call token.
    # Empty for attempts rebuilt from Postgres (only the launching controller knows it).
    env: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # For a warm worker (docs/warm-workers.md): its name, "<call id>/<attempt>" of
    # the attempt it was launched for. The launcher keeps following the worker
    # under that name while the attempt above becomes the one it runs now.
    # A standing worker (`min_workers`) is launched for no call: its name is
    # "standing-<hex>", and it is also its call_id, with attempt 0, until the
    # controller points it at the call it runs.
    worker: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.call_id, self.attempt)


# How the controller reads an Exit's kind:
EXIT_KINDS = {
    "exited": "the attempt ended by itself without a result: the function's failure "
              "(spends the user's retries)",
    "fatal": "the attempt cannot run and retrying will not help (bad image, bad config)",
    "timeout": "the attempt ran past its `timeout`: final",
    "stopped": "the controller stopped it (cancelled, superseded, shutting down)",
    "disrupted": "it vanished for a reason the user did not cause (platform retry)",
    "deferred": "it could not start yet (e.g. quota): back to the queue, nothing spent",
}


def worker_origin(name: str) -> tuple[str | None, int | None]:
    """The attempt a warm worker was launched for, from its name `<call id>/<attempt>`;
    (None, None) for a standing worker (`standing-<hex>`), which no call started."""
    origin_id, _, origin_attempt = name.rpartition("/")
    if not origin_id or not origin_attempt.isdigit():
        return None, None
    return origin_id, int(origin_attempt)


@dataclass(frozen=True)
class Exit:
    attempt: Attempt
    kind: str
    reason: str
    exit_code: int | None = None
    delay: float = 0.0  # for "deferred": seconds before trying again
    # The launcher saw the attempt's own runtime record its outcome (the local
    # forkserver's supervisor forwarded it): no transition for this exit can change
    # anything, so the controller sends none.
    recorded: bool = False

    def __post_init__(self) -> None:
        if self.kind not in EXIT_KINDS:
            raise ValueError(f"unknown exit kind {self.kind!r}")


Unfinished = Callable[[], list[Attempt]]


class Launcher(Protocol):
    def start(self) -> None:
        """Begin following what runs (called once this controller is the active one)."""

    def launch(self, attempt: Attempt) -> str:
        """Start the attempt (may return before it exists); a reference for people."""

    def stop(self, key: tuple[str, int]) -> None:
        """Stop the attempt if it still runs (cancelled, superseded)."""

    def active(self) -> list[Attempt]:
        """Attempts started and not yet reported in `exits()`."""

    def exits(self) -> list[Exit]:
        """Attempts that ended since the last call, each reported once."""

    def settle(self, exit_: Exit) -> None:
        """The exit's outcome is in Postgres: free what the attempt still holds."""

    def next_deadline(self) -> float | None:
        """Seconds until the launcher next needs `reconcile`, if it has a deadline."""

    def reconcile(self, unfinished: Unfinished, *, full: bool) -> None:
        """Compare what runs with the calls Postgres says are in flight.

        `full` after a (re)start or a lost event stream: every unfinished
        attempt is checked. Otherwise only what is due (deadlines, timers).
        Findings are reported through `exits()`.
        """

    def close(self) -> None:
        """Stop following; stop local work still running."""
