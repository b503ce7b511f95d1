"""Stop what `podfn dev` started when `podfn dev` itself dies, however it dies.

`podfn dev` starts Postgres (which daemonizes: it is not our child and no
parent-death signal reaches it), the API and the controller. The API and the
controller get PR_SET_PDEATHSIG(SIGTERM), but a SIGKILLed `podfn dev` runs no
cleanup for Postgres. So it starts this small watchdog first, with a pipe
whose write end only `podfn dev` holds: it writes a line for each process it
starts (`<pid> <signal> <marker>`: how to stop it politely, e.g. SIGINT for
Postgres's "fast" shutdown, and text its command line contains), and when
the pipe reaches end-of-file (the dev process exited, cleanly or not) the
watchdog stops every listed process still running, the last started first:
the polite signal, a grace period, then SIGKILL. After a clean stop everything is gone already and the
watchdog just exits.

A pid is only signalled if /proc/<pid>/cmdline still names what was
registered, so a recycled pid is never hit. Linux only (as PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

GRACE_SECONDS = 20.0


def command_line(pid: int) -> str:
    """The process's command line, or "" if it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace")


def alive(pid: int, marker: str) -> bool:
    return marker in command_line(pid)


def stop(processes: dict[int, tuple[signal.Signals, str]], grace: float = GRACE_SECONDS) -> None:
    """Stop each {pid: (polite signal, marker)} still alive: polite signal, grace, SIGKILL.

    One at a time, the last started first, as `podfn dev` stops them itself:
    what started later needs what started earlier on its way out (the
    controller hands its attempts back through Postgres; with Postgres
    stopping under it, it waits out its connection timeout instead).
    """
    for pid, (polite, marker) in reversed(processes.items()):
        if not alive(pid, marker):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, polite)
        deadline = time.monotonic() + grace
        while alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.1)  # not our child: nothing to wait on but its /proc entry
        if alive(pid, marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `podfn dev`, not for us
    processes: dict[int, tuple[signal.Signals, str]] = {}
    for line in sys.stdin.buffer:  # until EOF: `podfn dev` has exited
        pid, polite, marker = ([*line.decode().strip().split(" ", 2), "", ""])[:3]
        if pid.isdigit() and polite in signal.Signals.__members__ and marker:
            processes[int(pid)] = (signal.Signals[polite], marker)
    stop(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
