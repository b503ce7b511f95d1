"""Ctrl-C at a call site: cancel what that call site submitted, say so, and stop quietly.

`f.remote(...)` and `f.map(...)` wait for calls nobody else knows about; when
the user presses Ctrl-C there, leaving them running would waste the cluster.
They are cancelled in bulk, one line says how many, and the program stops
with a plain KeyboardInterrupt (so it exits as Ctrl-C does, status 130; the
interpreter only does that for KeyboardInterrupt itself, not a subclass)
carrying `podfn_cancelled`/`podfn_submitted` counts, whose default report is
that one line instead of a traceback from inside the HTTP client. A second
Ctrl-C while cancelling leaves at once. `spawn` is not covered: leaving a
call running is what `spawn` is for.
"""

from __future__ import annotations

import signal
import sys
import threading
import types
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from podfn.errors import PodfnError

# Ids per bulk-cancel request (the API accepts up to 10 000).
_CANCEL_CHUNK = 5000
_hook_installed = False


def _say(message: str) -> None:
    print(f"podfn: {message}", file=sys.stderr, flush=True)


def _quiet_excepthook(previous: Callable[..., Any]) -> Callable[..., Any]:
    def hook(kind: type[BaseException], value: BaseException,
             tb: types.TracebackType | None) -> None:
        if getattr(value, "podfn_cancelled", None) is not None:
            return  # already said on stderr; the interpreter still exits as for Ctrl-C
        previous(kind, value, tb)

    return hook


def _install_quiet_hook() -> None:
    global _hook_installed
    if not _hook_installed:
        sys.excepthook = _quiet_excepthook(sys.excepthook)
        _hook_installed = True


@contextmanager
def _second_interrupt_leaves() -> Iterator[None]:
    """While cancelling, a second Ctrl-C exits at once (quietly, status 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: types.FrameType | None) -> None:
        _say("interrupted again: leaving now; calls not yet cancelled keep running")
        raise SystemExit(130)

    previous = signal.signal(signal.SIGINT, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cancel_submitted(cancel_many: Callable[[list[str]], int], ids: Collection[str]) -> int:
    """Cancel `ids` in bulk after a Ctrl-C, telling the user; how many were cancelled."""
    ids = sorted(set(ids))
    _say(f"interrupted: cancelling the {len(ids)} call(s) submitted here "
         "(press Ctrl-C again to leave them running)")
    cancelled = 0
    with _second_interrupt_leaves():
        try:
            for start in range(0, len(ids), _CANCEL_CHUNK):
                cancelled += cancel_many(ids[start:start + _CANCEL_CHUNK])
        except PodfnError as exc:
            _say(f"could not cancel them all: {exc}")
    finished = len(ids) - cancelled
    _say(f"cancelled {cancelled} call(s)"
         + (f"; {finished} had already finished" if finished else ""))
    return cancelled


@contextmanager
def cancelling_on_interrupt(cancel_many: Callable[[list[str]], int],
                            ids: Collection[str]) -> Iterator[None]:
    """On Ctrl-C inside the block, cancel `ids` (read at that moment), then raise a
    KeyboardInterrupt that says so (`podfn_cancelled`, `podfn_submitted`)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if getattr(exc, "podfn_cancelled", None) is not None or not ids:
            raise
        submitted = len(ids)
        cancelled = cancel_submitted(cancel_many, ids)
        _install_quiet_hook()
        interrupt = KeyboardInterrupt(f"interrupted; cancelled {cancelled} of {submitted} call(s)")
        interrupt.podfn_cancelled = cancelled  # type: ignore[attr-defined]
        interrupt.podfn_submitted = submitted  # type: ignore[attr-defined]
        raise interrupt from None
