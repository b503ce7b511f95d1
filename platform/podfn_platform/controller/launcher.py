"""What the controller needs from a launcher: start attempts, stop them, report exits.

A launcher runs one attempt of one call somewhere (a local process, a pod).
It knows nothing of Postgres: it reports what happened to the attempt, and
the controller turns that into a guarded state transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Attempt:
    call_id: str
    attempt: int
    function_name: str
    spec: dict[str, Any]
    client_python: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.call_id, self.attempt)


@dataclass(frozen=True)
class Exit:
    """An attempt's process or pod ended.

    `kind` says who ended it and how the controller should read it:
    - "exited": it ended by itself (exit_code, or signal if killed from outside);
    - "timeout": the launcher stopped it at its deadline;
    - "stopped": the controller asked it to stop (cancelled, or a newer attempt);
    - "disrupted": it vanished for a reason the user did not cause.
    """

    attempt: Attempt
    kind: str
    reason: str
    exit_code: int | None = None


class Launcher(Protocol):
    def launch(self, attempt: Attempt) -> str:
        """Start the attempt; a reference to it (pid, pod name) for people."""

    def stop(self, key: tuple[str, int]) -> None:
        """Stop the attempt if it is still running (cancel, fenced)."""

    def active(self) -> list[Attempt]:
        """Attempts started and not yet reported as exited."""

    def exits(self) -> list[Exit]:
        """Attempts that ended since the last call (each reported once)."""

    def next_deadline(self) -> float | None:
        """Seconds until the launcher next needs a turn (a timeout), if any."""

    def enforce_deadlines(self) -> None:
        """Stop attempts past their timeout (reported as kind "timeout")."""

    def recover(self, unfinished: list[Attempt]) -> list[Exit]:
        """After a (re)start: what became of attempts a previous controller launched."""

    def close(self) -> None:
        """Stop everything still running."""
