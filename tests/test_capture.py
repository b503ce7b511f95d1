"""One runtime, many captures (a warm worker's calls): each gets exactly its own output.

The captures run in a process of their own (`_SCRIPT`), as in a runtime: its
descriptors 1 and 2 are files the test reads afterwards (the pod's log), and
nothing of pytest's own capture is in the way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the runtime's tee is Linux's")

_SCRIPT = r'''
import ctypes, json, os, signal, subprocess, sys
from podfn_runtime import capture

class Sink:
    def __init__(self):
        self.streams = {"stdout": "", "stderr": ""}
    def add(self, stream, text):
        self.streams[stream] += text

def call(tag, *, partial=False):
    print(f"print {tag}")
    os.write(1, f"fd1 {tag}\n".encode())
    os.write(2, f"fd2 {tag}\n".encode())
    subprocess.run(["echo", f"child {tag}"], check=True)
    libc = ctypes.CDLL(None)
    libc.puts(f"C {tag}".encode())
    libc.fflush(None)
    if partial:
        os.write(1, "\u00e9".encode()[:1])  # half a character at the end of the call

results = {}
def capture_one(name, **kwargs):
    sink = Sink()
    with capture.capture_fds(sink):
        call(name, **kwargs)
    results[name] = sink.streams

capture_one("a", partial=True)
first = capture._channel  # (a new one would reuse the closed descriptors' numbers)
capture_one("b")
results["same pipes"] = capture._channel is first
os.write(1, b"between calls\n")
# The runtime's fd 1 now points at another file (a forkserver child given its log):
# the next capture echoes there.
other = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
os.dup2(other, 1)
capture_one("c")
# The tee is killed between two calls: the next capture starts another.
os.kill(capture._tee_process.pid, signal.SIGKILL)
os.waitpid(capture._tee_process.pid, 0)
capture_one("d")
capture_one("e")
capture.stop_tee()
os.write(2, (json.dumps(results) + "\n").encode())
'''


# What one call can leave behind for the next on pipes kept from call to call: the
# late answer to a fence that timed out (a stalled tee, here stopped with SIGSTOP),
# and a pipe a child process made non-blocking (as Node's event loop leaves it).
_LEFT_BEHIND = r'''
import json, os, signal, subprocess, sys, threading, time
from podfn_runtime import capture

capture._DRAIN_SECONDS = 0.3  # (2 s in a runtime)
results = {}

def capture_one(name, body):
    streams = {"stdout": "", "stderr": ""}
    class Sink:
        def add(self, stream, text):
            streams[stream] += text
    with capture.capture_fds(Sink()):
        body()
    results[name] = streams["stdout"]

def stalled():
    tee = capture._tee_process.pid
    os.kill(tee, signal.SIGSTOP)
    threading.Timer(0.6, lambda: os.kill(tee, signal.SIGCONT)).start()
    os.write(1, b"stalled\n")

def late(name, busy=0.0):
    def body():
        time.sleep(busy)
        os.write(1, f"{name}\n".encode())
    return body

capture.start_tee()
capture_one("a", stalled)  # its fence times out; the tee answers it later
time.sleep(0.5)
capture_one("b", late("b"))
capture_one("c", late("c", busy=0.3))  # b's line would arrive now, were b's fence not b's
capture_one("d", lambda: subprocess.run(
    [sys.executable, "-c", "import os; os.set_blocking(1, False)"], check=True))
capture_one("e", lambda: (sys.stdout.write("y" * 4_000_000 + "\n"), sys.stdout.flush()))
results["e"] = len(results["e"])
results["e blocking"] = None
capture_one("f", lambda: results.__setitem__("e blocking", os.get_blocking(1)))
capture.stop_tee()
os.write(2, (json.dumps(results) + "\n").encode())
'''


def _run(tmp_path: Path, script: str = _SCRIPT) -> tuple[dict[str, object], str, str]:
    other = tmp_path / "other-log"
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        subprocess.run([sys.executable, "-c", script, str(other)], stdout=stdout,
                       stderr=stderr, check=True, timeout=60)
    lines = err.read_text().splitlines()
    return (json.loads(lines[-1]), out.read_text(errors="replace"),
            other.read_text(errors="replace") if other.exists() else "")


def _expected(tag: str) -> dict[str, str]:
    return {"stdout": f"print {tag}\nfd1 {tag}\nchild {tag}\nC {tag}\n",
            "stderr": f"fd2 {tag}\n"}


def test_each_capture_gets_its_own_output_and_the_log_gets_all(tmp_path: Path) -> None:
    results, log, other_log = _run(tmp_path)
    first = _expected("a")
    first["stdout"] += "\ufffd"  # the half character ends with its call
    assert results["a"] == first
    for tag in "bcde":
        assert results[tag] == _expected(tag), tag
    assert results["same pipes"] is True  # the second call did not make new pipes
    # Echoed as it was written: to the first log until fd 1 was pointed elsewhere.
    for tag in "ab":
        assert f"fd1 {tag}\n" in log and f"C {tag}\n" in log
    assert "between calls\n" in log
    for tag in "cde":
        assert f"fd1 {tag}\n" in other_log and f"fd1 {tag}\n" not in log


def test_what_a_call_leaves_on_the_pipes_does_not_reach_the_next(tmp_path: Path) -> None:
    results, _, _ = _run(tmp_path, _LEFT_BEHIND)
    # The late answer to a's fence is not taken for b's: b's line is b's, not c's.
    assert results["b"] == "b\n" and results["c"] == "c\n"
    # d's child left the pipe non-blocking: the next call writes on fresh pipes.
    assert results["e"] == 4_000_001 and results["e blocking"] is True
