"""The local launcher's forkserver: each attempt a forked process that behaves like a fresh one."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    TEST_TOKEN,
    Platform,
    ThreadedServer,
    platform_settings,
    running_platform,
)
from conftest import wait_until as wait_for  # (the name other test modules import)
from podfn import remote
from podfn.errors import CallFailed
from podfn.settings import Settings
from podfn_platform.api.app import create_app
from podfn_platform.controller.forkserver import SUPERVISOR_NAME, ForkServer, ForkServerError
from podfn_platform.controller.launcher import Exit
from podfn_platform.controller.local import LocalLauncher
from podfn_platform.database import Database

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(sys.platform != "linux", reason="the forkserver is Linux-only")]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def launcher_of(p: Platform) -> LocalLauncher:
    launcher = p.controller.launcher
    assert isinstance(launcher, LocalLauncher)
    return launcher


def whoami() -> dict[str, Any]:
    return {"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0),
            "pgid": os.getpgid(0), "call_id": os.environ.get("PODFN_CALL_ID"),
            "attempt": os.environ.get("PODFN_ATTEMPT"), "greeting": os.environ.get("GREETING"),
            "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
            "stdin": os.readlink("/proc/self/fd/0"),
            "sigint": str(signal.getsignal(signal.SIGINT))}


# -- through the platform (the `platform` fixture's launcher uses the forkserver) ---------


def test_an_attempt_is_a_forked_child_of_the_forkserver_in_a_session_of_its_own(
        platform: Platform) -> None:
    call = remote(whoami).options(env={"GREETING": "hi"}, memory="300Mi").spawn()
    me = call.result()
    server = launcher_of(platform).forkserver
    assert server is not None and server.alive
    assert me["ppid"] == server.pid != os.getpid()
    assert me["sid"] == me["pgid"] == me["pid"]  # Ctrl-C in a terminal cannot reach it
    assert me["call_id"] == call.id and me["attempt"] == "1"
    assert me["greeting"] == "hi"
    assert me["rlimit_as"] == 300 * 1024 * 1024
    assert me["stdin"] == "/dev/null"
    assert "default_int_handler" in me["sigint"]


def test_each_attempt_gets_a_new_process(platform: Platform) -> None:
    pids = {remote(os.getpid).remote() for _ in range(3)}
    assert len(pids) == 3


def test_exit_code_and_output_tail_are_reported(platform: Platform) -> None:
    @remote
    def crash() -> None:
        print("about to crash", file=sys.stderr)
        os._exit(3)

    with pytest.raises(CallFailed) as info:
        crash.remote()
    reason = info.value.reason or ""
    assert reason.startswith("the process exited with code 3 before recording a result")
    assert "last output:" in reason and "about to crash" in reason


def test_death_by_signal_is_reported(platform: Platform) -> None:
    @remote
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(CallFailed) as info:
        die.remote()
    assert (info.value.reason or "").startswith("the process was killed by SIGKILL")


def test_cancel_kills_the_forked_process(platform: Platform, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    @remote
    def linger() -> None:
        pidfile.write_text(str(os.getpid()))
        time.sleep(60)

    call = linger.spawn()
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the pid"))
    assert call.cancel() == "cancelled"
    wait_for(lambda: gone(pid), what="the process to die")


def test_a_dead_forkserver_disrupts_its_attempts_and_is_replaced(platform: Platform,
                                                                  tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    @remote
    def linger() -> int:
        pid = os.getpid()
        first = not pidfile.exists()
        pidfile.write_text(str(pid))
        if first:
            time.sleep(60)
        return pid

    call = linger.spawn()
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the pid"))
    old = launcher_of(platform).forkserver
    assert old is not None and old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), what="the child to die with the forkserver")
    second = call.result(timeout=30)
    assert second != pid
    info = call.info()
    assert [a["state"] for a in info["attempts"]] == ["disrupted", "succeeded"]
    assert "forkserver" in info["attempts"][0]["reason"]
    new = launcher_of(platform).forkserver
    assert new is not None and new.pid != old.pid


def test_only_an_exit_the_supervisor_saw_recorded_spares_the_controller_its_fail(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = launcher_of(platform)
    seen: list[Exit] = []
    exits = launcher.exits

    def spy() -> list[Exit]:
        got = exits()
        seen.extend(got)
        return got

    monkeypatch.setattr(launcher, "exits", spy)

    @remote(retries=0)
    def quit_early() -> None:
        os._exit(0)  # exit code 0, nothing recorded: only the controller can fail it

    @remote(retries=0)
    def boom() -> None:
        raise ValueError("boom")  # the runtime records this failure itself

    def exit_of(call_id: str) -> Exit:
        return wait_for(lambda: next((e for e in seen if e.attempt.call_id == call_id), None),
                        what=f"the exit of {call_id}")

    ok = remote(os.getpid).spawn()
    ok.result(timeout=30)
    assert exit_of(ok.id).recorded
    failed = boom.spawn()
    with pytest.raises(ValueError, match="boom"):
        failed.result(timeout=30)
    assert exit_of(failed.id).recorded
    early = quit_early.spawn()
    with pytest.raises(CallFailed) as info:
        early.result(timeout=30)
    assert not exit_of(early.id).recorded
    assert "the runtime exited without recording a result" in (info.value.reason or "")


def supervisors(zygote: int) -> list[int]:
    """The forkserver's supervisor (podfn_runtime/proxy.py), found by its process name."""
    found = []
    for child in Path(f"/proc/{zygote}/task/{zygote}/children").read_text().split():
        try:
            name = Path(f"/proc/{child}/comm").read_bytes().strip()
        except OSError:
            continue
        if name == SUPERVISOR_NAME:
            found.append(int(child))
    return found


def test_a_cold_call_holds_no_connection_and_outlives_its_supervisor(
        platform: Platform, tmp_path: Path) -> None:
    release = tmp_path / "release"

    @remote
    def wait_then_look() -> list[str]:
        import gc

        while not release.exists():
            time.sleep(0.02)
        psycopg = sys.modules.get("psycopg")
        if psycopg is None:
            return []
        return [repr(o) for o in gc.get_objects() if isinstance(o, psycopg.Connection)]

    call = wait_then_look.spawn()
    server = wait_for(lambda: launcher_of(platform).forkserver, what="the forkserver")
    assert server.pid is not None
    [supervisor] = wait_for(lambda: supervisors(server.pid or 0), what="the supervisor")
    release.touch()
    assert call.result(timeout=30) == [], "the call's process holds no connection of its own"
    # Without its supervisor, a call still records its outcome (connecting by itself),
    # and the next call gets a new supervisor.
    release.unlink()
    call = wait_then_look.spawn()
    wait_for(lambda: call.status() == "running", what="the call to run")
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: gone(supervisor), what="the supervisor to die")
    release.touch()
    assert call.result(timeout=30) == [], "recorded by a connection of its own, made then"
    assert remote(os.getpid).remote() != supervisor
    assert wait_for(lambda: supervisors(server.pid or 0), what="a new supervisor") != [supervisor]


def test_python_variables_in_env_use_a_fresh_interpreter(platform: Platform) -> None:
    me = remote(whoami).options(env={"PYTHONHASHSEED": "7"}).spawn().result()
    server = launcher_of(platform).forkserver
    assert server is None or me["ppid"] != server.pid


@pytest.fixture
def plain_platform(database_url: str, db: Database,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    wake = threading.Event()
    launcher = LocalLauncher(database_url, on_exit=wake.set, forkserver=False)
    with running_platform(platform_settings(database_url), db, launcher, wake,
                          monkeypatch) as running:
        yield running


def test_the_plain_path_still_works_when_disabled(plain_platform: Platform) -> None:
    me = remote(whoami).options(memory="300Mi").spawn().result()
    assert launcher_of(plain_platform).forkserver is None
    assert me["ppid"] == os.getpid()
    assert me["sid"] == me["pid"] and me["rlimit_as"] == 300 * 1024 * 1024


def test_the_setting_reads_zero_and_one() -> None:
    assert Settings.from_env({"PODFN_LOCAL_FORKSERVER": "0"}).local_forkserver is False
    assert Settings.from_env({"PODFN_LOCAL_FORKSERVER": "1"}).local_forkserver is True
    assert Settings.from_env({}).local_forkserver is True


# -- the forkserver alone --------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ForkServer]:
    fs = ForkServer(sys.executable, dict(os.environ)).start()
    yield fs
    fs.close()


def spawn(fs: ForkServer, env: dict[str, str], log: Path) -> tuple[int, threading.Event, list]:
    ended = threading.Event()
    status: list[int | None] = []

    def on_exit(code: int | None) -> None:
        status.append(code)
        ended.set()

    log.touch()  # the launcher passes a FIFO; the zygote opens either the same way
    return fs.spawn(env, str(log), None, on_exit), ended, status


def test_exit_status_and_output_come_back(server: ForkServer, tmp_path: Path) -> None:
    log = tmp_path / "log"
    pid, ended, status = spawn(server, {"PATH": os.environ["PATH"]}, log)
    assert pid > 0
    assert ended.wait(20)
    assert status == [2]  # the runtime's usage error: no call id, attempt or database
    assert "missing --call-id" in log.read_text()


def test_closing_the_forkserver_kills_its_children(tmp_path: Path) -> None:
    fs = ForkServer(sys.executable, dict(os.environ)).start()
    # A database that never answers: the runtime waits in connect.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    url = f"postgresql://x@127.0.0.1:{listener.getsockname()[1]}/x?connect_timeout=60"
    env = {"PATH": os.environ["PATH"], "PODFN_CALL_ID": "c", "PODFN_ATTEMPT": "1",
           "PODFN_DATABASE_URL": url}
    try:
        pid, ended, status = spawn(fs, env, tmp_path / "log")
        assert not gone(pid)
        fs.close()
        assert ended.wait(20)
        assert status in ([None], [-signal.SIGKILL])
        wait_for(lambda: gone(pid), what="the child to die")
        with pytest.raises(ForkServerError):
            spawn(fs, env, tmp_path / "log2")
    finally:
        fs.close()
        listener.close()


def test_controller_killed_takes_forked_children_with_it(database_url: str, db: Database,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(platform_settings(database_url), db=db)
    pidfile = tmp_path / "pid"

    @remote
    def linger() -> None:
        pidfile.write_text(f"{os.getpid()} {os.getppid()}")
        time.sleep(60)

    env = {**os.environ, "PODFN_DATABASE_URL": database_url, "PODFN_SWEEP_SECONDS": "0.5"}
    with ThreadedServer(app) as api:
        monkeypatch.setenv("PODFN_URL", api.url)
        monkeypatch.setenv("PODFN_TOKEN", TEST_TOKEN)
        controller = subprocess.Popen([sys.executable, "-m", "podfn", "controller"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            linger.spawn()
            text = wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the pid")
            pid, zygote = (int(x) for x in text.split())
            assert zygote != controller.pid  # forked from the forkserver
        finally:
            controller.send_signal(signal.SIGKILL)
            controller.wait(10)
        wait_for(lambda: gone(zygote), what="the forkserver to die with the controller")
        wait_for(lambda: gone(pid), what="the attempt to die with the controller")
    app.extensions["podfn.waiter"].close()


def test_what_the_runtime_logs_before_an_attempt_reaches_the_forkservers_stderr() -> None:
    """The zygote builds the runtime's log handler once (prepare_log); until an attempt
    points it at its own stderr, a line the zygote or a waiting spare logs goes to the
    zygote's stderr (the controller's), not to /dev/null."""
    script = ("import logging\n"
              "from podfn_runtime import main\n"
              "main.prepare_log()\n"
              "logging.getLogger('podfn.runtime').warning('a spare could not connect')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert "podfn-runtime WARNING a spare could not connect" in done.stderr, done.stderr
