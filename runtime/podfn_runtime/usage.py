"""What one attempt really used: peak memory, CPU seconds and wall time.

Measured from inside the runtime with getrusage, so it works the same in a
pod and in the embedded default's processes, with no metrics server. Peak
memory is the larger of this process's and its largest waited-for child's
peak resident set (Linux reports ru_maxrss in KiB); a child still running
when the call returns is not counted (getrusage only sees children that
were waited for). CPU is user + system time of this process and its
waited-for children since the attempt started. The numbers go to Postgres
through the runtime protocol's `usage` function just before the outcome:
after the outcome the attempt's secret no longer works.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("podfn.runtime")


class _Transitions(Protocol):
    def try_once(self, name: str, **params: object) -> object: ...


def _cpu(me: resource.struct_rusage, children: resource.struct_rusage) -> float:
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _peak_bytes(me: resource.struct_rusage, children: resource.struct_rusage) -> int:
    unit = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return max(me.ru_maxrss, children.ru_maxrss) * unit


def _rusage() -> tuple[resource.struct_rusage, resource.struct_rusage]:
    """This process's and its children's usage: one getrusage each (a warm worker
    reads them twice per call)."""
    return resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)


@dataclass(frozen=True)
class Usage:
    peak_bytes: int
    cpu_seconds: float
    wall_seconds: float


class Meter:
    """Started when the attempt starts; `read()` is what it used so far."""

    def __init__(self) -> None:
        self._cpu = _cpu(*_rusage())
        self._wall = time.monotonic()

    def read(self) -> Usage:
        used = _rusage()
        return Usage(_peak_bytes(*used), max(_cpu(*used) - self._cpu, 0.0),
                     max(time.monotonic() - self._wall, 0.0))


def record(db: _Transitions, used: Usage, call_id: str, attempt: int) -> None:
    """Record the attempt's usage; a failure to do so is logged, never the call's failure.

    One try, no retries: with the database away, the retry budget belongs to the
    outcome that follows, not to these numbers."""
    try:
        db.try_once("usage", id=call_id, attempt=attempt, peak_bytes=used.peak_bytes,
                      cpu_seconds=used.cpu_seconds, wall_seconds=used.wall_seconds)
    except Exception as exc:  # the outcome matters more than its usage numbers
        log.warning("could not record the usage of call %s attempt %d: %s", call_id, attempt, exc)
