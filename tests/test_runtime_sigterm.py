"""The runtime handles SIGTERM: as PID 1 in a container it would otherwise be ignored."""

from __future__ import annotations

import signal
import subprocess
import sys

from podfn_runtime.termination import EXIT_TERMINATED

PROGRAM = """
import sys, time
from podfn_runtime import termination
termination.install(lambda: print("recorded the output so far", flush=True))
print("running", flush=True)
time.sleep(60)
"""


def test_sigterm_records_then_exits_with_128_plus_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == EXIT_TERMINATED == 143
    assert "recorded the output so far" in out


def test_a_record_that_hangs_does_not_hold_the_exit() -> None:
    program = PROGRAM.replace('lambda: print("recorded the output so far", flush=True)',
                              "lambda: time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)  # bounded at 2 s inside
    assert proc.returncode == EXIT_TERMINATED
