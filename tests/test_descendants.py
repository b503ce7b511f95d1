"""Nothing a call starts outlives it: setsid grandchildren die with success, timeout, cancel and crash.

And a local attempt's output never lands on disk: it goes through a pipe of
which the launcher keeps a bounded tail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_forkserver import gone, launcher_of, wait_for

from conftest import Platform, platform_settings, running_platform
from podfn import remote
from podfn.errors import CallCancelled, CallFailed, CallTimeout
from podfn_platform.controller.local import OUTPUT_TAIL_BYTES, LocalLauncher, OutputTail
from podfn_platform.database import Database
from podfn_runtime import reaper

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(sys.platform != "linux", reason="subreapers are Linux-only")]

# Double fork: the middle process exits at once, so the grandchild (in a session
# of its own) is an orphan; it reports its pid on the fd given, then sleeps.
_DETACH = """
import os, sys, time
fd = int(sys.argv[1])
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
os.write(fd, str(os.getpid()).encode())
os.close(fd)
devnull = os.open(os.devnull, os.O_RDWR)
for std in (0, 1, 2):
    os.dup2(devnull, std)
time.sleep(600)
"""


def start_detached_grandchild() -> int:
    """Start an orphaned, setsid'ed grandchild; its pid (called inside the call)."""
    read, write = os.pipe()
    subprocess.run([sys.executable, "-c", _DETACH, str(write)], pass_fds=[write], check=True)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        return int(fh.read())


@pytest.fixture(params=["forkserver", "plain"])
def any_platform(request: pytest.FixtureRequest, database_url: str, db: Database,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    wake = threading.Event()
    launcher = LocalLauncher(database_url, on_exit=wake.set,
                             forkserver=request.param == "forkserver")
    with running_platform(platform_settings(database_url), db, launcher, wake,
                          monkeypatch) as running:
        yield running


def test_after_success(any_platform: Platform) -> None:
    pid = remote(start_detached_grandchild).remote()
    assert gone(pid)  # already: the runtime kills the tree before it records the result


def _linger(pidfile: Path) -> None:
    pidfile.write_text(str(start_detached_grandchild()))
    time.sleep(60)


def test_after_timeout(any_platform: Platform, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(CallTimeout):
        remote(_linger).options(timeout=3).remote(pidfile)
    pid = int(pidfile.read_text())
    wait_for(lambda: gone(pid), what="the grandchild to die")


def test_after_cancel(any_platform: Platform, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    call = remote(_linger).spawn(pidfile)
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the pid"))
    assert call.cancel() == "cancelled"
    with pytest.raises(CallCancelled):
        call.result(timeout=10)
    wait_for(lambda: gone(pid), what="the grandchild to die")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_after_the_runtime_itself_is_killed(any_platform: Platform, tmp_path: Path,
                                            sig: int) -> None:
    """SIGTERM: the runtime kills its tree itself, and the attempt is a disruption.

    SIGKILL: the forkserver adopts what the runtime left and kills it (on the
    plain path nothing can: the runtime's parent is the controller); the
    attempt spends a user retry, as a death by SIGKILL may be out-of-memory.
    """
    if sig == signal.SIGKILL and not launcher_of(any_platform).uses_forkserver:
        pytest.skip("only a subreaper above the runtime can adopt what a SIGKILLed one left")
    pidfile = tmp_path / "pids"

    def linger_once() -> str:
        if pidfile.exists():
            return "second attempt"
        grandchild = start_detached_grandchild()
        pidfile.write_text(f"{os.getpid()} {grandchild}")
        time.sleep(60)
        return "unreachable"

    call = remote(linger_once).options(retries=1).spawn()
    runtime, grandchild = map(int, wait_for(
        lambda: pidfile.exists() and pidfile.read_text().split(), what="the pids"))
    os.kill(runtime, sig)
    wait_for(lambda: gone(grandchild), what="the grandchild to die")
    assert call.result(timeout=30) == "second attempt"
    row = any_platform.db.one("get_call", {"id": call.id})
    assert row is not None
    assert (row["user_failures"], row["disruptions"]) == (
        (0, 1) if sig == signal.SIGTERM else (1, 0))


def test_kill_tree_kills_a_tree_that_keeps_forking() -> None:
    root = subprocess.Popen([sys.executable, "-c",
                             "import os, time\nfor _ in range(3):\n    os.fork()\ntime.sleep(60)"],
                            start_new_session=True)
    try:
        wait_for(lambda: len(reaper.descendants(root.pid)) == 7, what="the tree to grow")
        members = reaper.descendants(root.pid)
        killed = reaper.kill_tree(root.pid, include_root=True)
        assert set(members) | {root.pid} <= set(killed)
        assert root.wait(10) == -signal.SIGKILL
        wait_for(lambda: all(gone(pid) for pid in members), what="the tree to die")
    finally:
        root.kill()
        root.wait()


# -- output --------------------------------------------------------------------------


def test_output_tail_keeps_only_the_last_bytes() -> None:
    read, write = os.pipe()
    tail = OutputTail(read, limit=100)
    with os.fdopen(write, "wb") as out:
        out.write(b"x" * 100_000 + b"\nthe end")
    text = tail.text(limit=50)
    assert text.startswith("...") and text.endswith("the end") and len(text) <= 53
    assert len(tail._buffer) <= 100


def test_a_chatty_call_leaves_no_file_and_a_bounded_tail(any_platform: Platform) -> None:
    def chatty() -> None:
        chunk = "y" * 1023 + "\n"
        for _ in range(20 * 1024):  # 20 MiB straight to fd 1, past the stored capture
            os.write(1, chunk.encode())
        os.write(2, b"last words\n")
        os._exit(3)

    call = remote(chatty).spawn()
    with pytest.raises(CallFailed) as info:
        call.result(timeout=60)
    reason = info.value.reason or ""
    assert reason.endswith("last words") and len(reason) < OUTPUT_TAIL_BYTES
    # Other processes share these directories: look for anything named after this call.
    from podfn_platform.controller import local

    leftovers = [path for base in local._fifo_bases()
                 for path in (*base.glob(f"*{call.id}*"), *base.glob(f"podfn-output-*/*{call.id}*"))]
    assert leftovers == []


def test_the_fifo_directory_of_a_dead_controller_is_removed() -> None:
    """FIFO names go as attempts start; a crashed controller's directory goes with the next
    one, wherever it was made (the memory file system, or the temporary directory)."""
    from podfn_platform.controller import local

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    bases = local._fifo_bases()
    left = [Path(tempfile.mkdtemp(prefix=f"podfn-output-{dead.pid}-", dir=base))
            for base in bases]
    for directory in left:
        os.mkfifo(directory / "call-1")
    mine = local._fifo_dir()
    try:
        assert not any(directory.exists() for directory in left)
        assert mine.exists() and mine.name.startswith(f"podfn-output-{os.getpid()}-")
        assert mine.parent == bases[0]
    finally:
        shutil.rmtree(mine, ignore_errors=True)
        for directory in left:
            shutil.rmtree(directory, ignore_errors=True)


def test_fifos_are_made_in_memory_when_linux_offers_it(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    from podfn_platform.controller import local

    if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK | os.X_OK):
        assert local._fifo_bases()[0] == Path("/dev/shm")
    monkeypatch.setattr(local, "_MEMORY_FS", tmp_path / "absent")
    assert local._fifo_bases() == [Path(tempfile.gettempdir())]
    mine = local._fifo_dir()
    try:
        assert mine.parent == Path(tempfile.gettempdir())
    finally:
        shutil.rmtree(mine, ignore_errors=True)
