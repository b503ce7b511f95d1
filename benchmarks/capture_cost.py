"""What the runtime's own work around a trivial call costs, with no database.

    python benchmarks/capture_cost.py [COUNT]

Runs `run_only` (podfn_runtime/main.py) around the identity function COUNT
times in this process, as a warm worker runs its calls, with the output
capture and the reaper each in place or stubbed out, and prints per call the
CPU of this process (its threads included: the capture's reader), the CPU of
the tee process, and the wall time. The difference between the rows is what
the capture and the reaper cost a call (benchmarks/notes.md, issue 12, sixth
round). Linux only (the tee's CPU is read from /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import time
from pathlib import Path
from typing import Any

import cloudpickle

from podfn_runtime import capture, main, reaper
from podfn_runtime.main import FunctionCache, run_only


def identity(x: int) -> int:
    return x


class _NoDatabase:
    """A trivial call that prints nothing writes nothing before its outcome."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the call used the database: {name}")


class _NoReaper:
    @staticmethod
    def kill_descendants() -> int:
        return 0


def _tee_cpu() -> float:
    tee = capture._tee_process
    assert tee is not None
    fields = Path(f"/proc/{tee.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int, nargs="?", default=4000,
                        help="calls per row (default 4000)")
    count = parser.parse_args().count
    payload = cloudpickle.dumps(identity)
    claimed = {"id": "c", "attempt": 1, "function": payload,
               "function_digest": hashlib.sha256(payload).hexdigest(),
               "args": cloudpickle.dumps(((1,), {})), "spec": {},
               "client_python": platform.python_version(),
               "client_cloudpickle": cloudpickle.__version__, "result_format": "pickle"}
    capture.start_tee()
    capture.start_reader()
    functions, db = FunctionCache(), _NoDatabase()
    real_capture = main.capture_fds
    for label, captured, reaped in (("all", True, True), ("no capture", False, True),
                                    ("no reaper", True, False), ("neither", False, False)):
        main.capture_fds = real_capture if captured else (  # type: ignore[assignment]
            lambda sink: contextlib.nullcontext())
        main.reaper = reaper if reaped else _NoReaper  # type: ignore[assignment]
        for _ in range(200):
            run_only(db, claimed, 1 << 26, functions)  # type: ignore[arg-type]
        cpu, tee, wall = time.process_time(), _tee_cpu(), time.perf_counter()
        for _ in range(count):
            run_only(db, claimed, 1 << 26, functions)  # type: ignore[arg-type]
        print(f"{label:10s} CPU {(time.process_time() - cpu) / count * 1e6:6.1f} us, "
              f"tee {(_tee_cpu() - tee) / count * 1e6:5.1f} us, "
              f"wall {(time.perf_counter() - wall) / count * 1e6:6.1f} us per call")
    capture.stop_tee()


if __name__ == "__main__":
    measure()
