"""SIGTERM: record what can be recorded, kill what the call started, then exit.

In a container the runtime is PID 1, and the kernel delivers no signal to
PID 1 that it has no handler for: without this, SIGTERM (a deleted,
evicted or preempted pod, a timed-out one, an operator, the chaos run) is
ignored and the process runs on until SIGKILL at the end of the grace
period, losing the output it had not written yet.

One handler, installed when the runtime starts, does all of it: while a
call runs (`recording`), the output captured so far is written (an output
chunk is a guarded protocol call, so a stale attempt writes nothing); then
the call's descendants are killed (the runtime is their subreaper, so
nothing it started outlives it however it detached) and the process exits
at once with 128 + SIGTERM, the shell's convention, which the launchers
read as a disruption. Before and between calls there is nothing to write,
and the same handler kills and exits.

The write runs on its own thread with a bound: the handler interrupts the
main thread wherever it is, possibly inside a database call that holds the
connection, and must not wait for it for ever. SIGKILL cannot be caught:
what a SIGKILLed runtime leaves is killed by the local forkserver (a
subreaper too) or, on Kubernetes, with the pod.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from podfn_runtime import reaper

log = logging.getLogger("podfn.runtime")

EXIT_TERMINATED = 128 + signal.SIGTERM
_WRITE_SECONDS = 2.0

# What the running call has to write on SIGTERM; None when no call runs.
_record: Callable[[], None] | None = None
# What a warm worker has to write on SIGTERM whether a call runs or not: the
# outcomes its recorder holds (worker.py), so finished calls are not run again.
_pending: Callable[[], None] | None = None


def install() -> None:
    """Handle SIGTERM for the life of the process (see the module's docstring)."""
    signal.signal(signal.SIGTERM, _on_term)


@contextmanager
def recording(record: Callable[[], None]) -> Iterator[None]:
    """While the block runs, a SIGTERM first calls `record()` (bounded) to save the call's output."""
    global _record
    _record = record
    try:
        yield
    finally:
        _record = None


@contextmanager
def pending(write: Callable[[], None]) -> Iterator[None]:
    """While the block runs, a SIGTERM also calls `write()` (bounded, after the output)."""
    global _pending
    _pending = write
    try:
        yield
    finally:
        _pending = None


def _on_term(signum: int, frame: FrameType | None) -> None:
    writes = [w for w in (_record, _pending) if w is not None]
    if writes:
        log.warning("SIGTERM: the pod is being stopped; recording what it can and exiting")
        writer = threading.Thread(target=_quietly(*writes), name="podfn-sigterm", daemon=True)
        writer.start()
        writer.join(_WRITE_SECONDS)
    else:
        log.warning("SIGTERM: the pod is being stopped; exiting")
    reaper.kill_descendants(timeout=_WRITE_SECONDS)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_TERMINATED)


def _quietly(*writes: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        for write in writes:
            try:
                write()
            except Exception as exc:  # the process is ending; say why the write failed
                log.warning("could not record on SIGTERM: %s", exc)
    return run
