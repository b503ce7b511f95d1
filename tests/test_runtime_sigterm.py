"""The runtime handles SIGTERM: as PID 1 in a container it would otherwise be ignored.

One handler, installed at start: it writes the running call's output (when a
call runs), kills what the call started, and exits with 128 + SIGTERM, which
the launchers read as a disruption (test_descendants runs it end to end).
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from test_forkserver import gone

from podfn_runtime.termination import EXIT_TERMINATED

# The runtime's start (subreaper, handler), then a detached (setsid, double
# fork) grandchild as a call might leave, then a call that runs for a minute.
PROGRAM = """
import os, sys, time
from podfn_runtime import reaper, termination
reaper.become_subreaper()
termination.install()
if os.fork() == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)  # the test reads our stdout to its end
    time.sleep(600)
    os._exit(0)
os.wait()
kids = reaper.descendants(os.getpid())
with termination.recording(lambda: print("recorded the output so far", flush=True)):
    print("running", *kids, flush=True)
    time.sleep(60)
"""


def run_and_terminate(program: str) -> tuple[int, str, list[int]]:
    """Start `program`, SIGTERM it once it runs; its exit code, output and descendants."""
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    word, *kids = proc.stdout.readline().split()
    assert word == "running"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return proc.returncode, out, [int(k) for k in kids]


@pytest.mark.skipif(sys.platform != "linux", reason="subreapers are Linux-only")
def test_sigterm_records_kills_the_descendants_then_exits_with_128_plus_sigterm() -> None:
    code, out, kids = run_and_terminate(PROGRAM)
    assert code == EXIT_TERMINATED == 143
    assert "recorded the output so far" in out
    assert len(kids) == 1 and gone(kids[0]), "the detached grandchild outlived the runtime"


@pytest.mark.skipif(sys.platform != "linux", reason="subreapers are Linux-only")
def test_between_calls_the_same_handler_kills_and_exits() -> None:
    program = PROGRAM.replace('with termination.recording(lambda: print("recorded the output '
                              'so far", flush=True)):', "if True:")
    code, out, kids = run_and_terminate(program)
    assert code == EXIT_TERMINATED
    assert "recorded" not in out
    assert len(kids) == 1 and gone(kids[0])


def test_a_record_that_hangs_does_not_hold_the_exit() -> None:
    program = PROGRAM.replace('lambda: print("recorded the output so far", flush=True)',
                              "lambda: time.sleep(600)")
    code, _, _ = run_and_terminate(program)  # bounded at 2 s inside
    assert code == EXIT_TERMINATED
