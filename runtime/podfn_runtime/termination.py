"""SIGTERM: record what can be recorded, then exit.

In a container the runtime is PID 1, and the kernel delivers no signal to
PID 1 that it has no handler for: without this, SIGTERM (a deleted,
evicted or preempted pod, a timed-out one) is ignored and the process runs
on until SIGKILL at the end of the grace period, losing the output it had
not written yet. With it, the call's descendants are killed, the output
captured so far is written (a
guarded `progress` transition, so a stale attempt writes nothing) and the
process exits at once with 128 + SIGTERM, the shell's convention.

The write runs on its own thread with a bound: the handler interrupts the
main thread wherever it is, possibly inside a database call that holds the
connection, and must not wait for it for ever.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from podfn_runtime import reaper

log = logging.getLogger("podfn.runtime")

EXIT_TERMINATED = 128 + signal.SIGTERM
_WRITE_SECONDS = 2.0


def install(record: Callable[[], None]) -> None:
    """On SIGTERM: `record()` (bounded), then exit with EXIT_TERMINATED."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: the pod is being stopped; recording the output so far and exiting")
        writer = threading.Thread(target=_quietly(record), name="podfn-sigterm", daemon=True)
        writer.start()
        writer.join(_WRITE_SECONDS)
        # What the call started must not outlive it (the runtime is their subreaper).
        reaper.kill_descendants(timeout=_WRITE_SECONDS)
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(EXIT_TERMINATED)

    signal.signal(signal.SIGTERM, on_term)


def _quietly(record: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            record()
        except Exception as exc:  # the process is ending; say why the write failed
            log.warning("could not record the output on SIGTERM: %s", exc)
    return run
