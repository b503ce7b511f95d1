"""`podfn dev` and `podfn demo`: the whole platform on one machine.

Embedded Postgres (unless PODFN_DATABASE_URL names one), migrations, the API
under gunicorn and a controller with the local launcher, each in its own
process as in a cluster, plus a client profile so `@remote` finds them.

Nothing outlives `podfn dev`, even when it is SIGKILLed: the API and the
controller get PR_SET_PDEATHSIG(SIGTERM), and a watchdog process
(watchdog.py) stops them and Postgres when `podfn dev`'s end of a pipe
closes. A pid file in the data directory (`podfn-dev.pid`) names what a run
started; a new run on the same directory refuses to start while its owner
lives, and otherwise stops whatever a crashed run left (both watchdog and
dev killed at once, say) before it starts its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from podfn.errors import ConfigurationError, PlatformUnreachable
from podfn.settings import Settings
from podfn_platform import migrations, roles, watchdog
from podfn_platform.database import Database
from podfn_platform.embedded import EmbeddedPostgres

log = logging.getLogger("podfn.dev")

PID_FILE = "podfn-dev.pid"
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """In a child before exec: SIGTERM when `parent` dies (or now, if it already has)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class DevStack:
    """Postgres + API + controller; a context manager that leaves nothing running."""

    settings: Settings
    data_dir: Path
    port: int
    temporary: bool = False
    url: str = ""
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    database_url: str = ""
    _postgres: EmbeddedPostgres | None = None
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _watchdog: subprocess.Popen[bytes] | None = None
    _started: dict[str, int] = field(default_factory=dict)  # what the pid file lists
    _processes: list[tuple[int, str, str]] = field(default_factory=list)  # (pid, signal, marker)

    def start(self, *, quiet: bool = False) -> DevStack:
        try:
            return self._start(quiet)
        except BaseException:
            self.stop()
            raise

    def _start(self, quiet: bool) -> DevStack:
        host = self.settings.host
        self._claim_data_dir()
        if not port_is_free(host, self.port):
            raise ConfigurationError(f"port {self.port} on {host} is in use; choose another with "
                                     "--port, or stop what is listening there")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "podfn_platform.watchdog"], stdin=subprocess.PIPE,
            start_new_session=True, close_fds=True)
        self._record("watchdog", self._watchdog.pid)
        if self.settings.database_url:
            self.database_url = self.settings.database_url
        else:
            pgdata = self.data_dir / "pgdata"
            # Handles of a crashed run would keep the library from ever stopping it.
            (pgdata / ".handle_pids.json").unlink(missing_ok=True)
            self._postgres = EmbeddedPostgres(pgdata, delete=self.temporary)
            self.database_url = self._postgres.url
            if self._postgres.pid is not None:
                self._watch(self._postgres.pid, "postgres", signal.SIGINT, str(pgdata))
        # Managed roles get fresh passwords each start unless some are configured.
        fresh = self.settings.manage_roles
        self.settings = dataclasses.replace(
            self.settings, database_url=self.database_url,
            platform_role_password=self.settings.platform_role_password
            or (secrets.token_urlsafe(24) if fresh else None),
            runtime_role_password=self.settings.runtime_role_password
            or (secrets.token_urlsafe(24) if fresh else None))
        with Database(self.database_url, name="podfn-migrate") as db:
            migrations.apply(db)
            roles.ensure(db, roles.Roles.from_settings(self.settings))
        if self.settings.launcher == "kubernetes":
            self._publish_database_secret()
        self.url = f"http://{host}:{self.port}"
        # API and controller connect as the platform role, not as the owner that migrated.
        platform_url = roles.as_role(self.database_url, self.settings.platform_role,
                                     self.settings.platform_role_password)
        env = {**os.environ, "PODFN_DATABASE_URL": platform_url,
               "PODFN_RUNTIME_DATABASE_URL": roles.runtime_database_url(self.settings),
               "PODFN_RUNTIME_API_URL": self.settings.runtime_api_url or f"http://{host}:{self.port}",
               "PODFN_API_TOKEN": self.token, "PODFN_HOST": host, "PODFN_PORT": str(self.port),
               "PODFN_LAUNCHER": self.settings.launcher,
               "PODFN_INSECURE_NO_AUTH": "1" if self.settings.insecure_no_auth else "0"}
        out = subprocess.DEVNULL if quiet else None
        me = os.getpid()
        for command in ("serve", "controller"):
            child = subprocess.Popen(
                [sys.executable, "-m", "podfn", command], env=env, stdout=out, stderr=out,
                start_new_session=True, preexec_fn=lambda: _die_with(me))
            self._children.append(child)
            self._watch(child.pid, command, signal.SIGTERM, f"podfn {command}")
        self._wait_ready()
        return self

    # -- what this run started, for the watchdog and the next run -------------

    @property
    def pid_file(self) -> Path:
        return self.data_dir / PID_FILE

    def _claim_data_dir(self) -> None:
        """Own the data directory: refuse a live owner, clean up after a dead one."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            previous = json.loads(self.pid_file.read_text())
        except FileNotFoundError:
            previous = {}
        except (OSError, ValueError):
            previous = {}
        owner = previous.get("dev")
        if isinstance(owner, int) and watchdog.command_line(owner) == previous.get("command"):
            raise ConfigurationError(
                f"another `podfn dev` (pid {owner}) is running with the data directory "
                f"{self.data_dir}; stop it first, or use another --data-dir")
        leftovers = {int(pid): (signal.Signals[polite], marker)
                     for pid, polite, marker in previous.get("processes", [])}
        pgdata = self.data_dir / "pgdata"
        postmaster = _postmaster_pid(pgdata)
        if postmaster is not None:  # started first, so stopped last
            leftovers = {postmaster: (signal.SIGINT, str(pgdata)), **leftovers}
        running = {pid: how for pid, how in leftovers.items() if watchdog.alive(pid, how[1])}
        if running:
            log.warning("stopping what a previous `podfn dev` on %s left running (pids %s)",
                        self.data_dir, ", ".join(map(str, sorted(running))))
            watchdog.stop(running)
        self._started = {"dev": os.getpid()}
        self._processes = []
        self._write_pid_file()

    def _record(self, name: str, pid: int) -> None:
        self._started[name] = pid
        self._write_pid_file()

    def _watch(self, pid: int, name: str, polite: signal.Signals, marker: str) -> None:
        """Have the watchdog (and the next run) stop `pid` if we die first."""
        self._processes.append((pid, polite.name, marker))
        self._record(name, pid)
        assert self._watchdog is not None and self._watchdog.stdin is not None
        self._watchdog.stdin.write(f"{pid} {polite.name} {marker}\n".encode())
        self._watchdog.stdin.flush()

    def _write_pid_file(self) -> None:
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self._started, "processes": self._processes,
                                   "command": watchdog.command_line(os.getpid())}))
        tmp.replace(self.pid_file)

    def _publish_database_secret(self) -> None:
        """Pods read the runtime role's database URL from a Secret; write it with the user's
        own credentials (the platform's URL never goes to the cluster)."""
        from podfn_platform.kube.client import KubeClient

        if self._postgres is not None:
            log.warning("the embedded Postgres listens on a local socket that pods in a real "
                        "cluster cannot reach; set PODFN_DATABASE_URL to a Postgres they can")
        kube = KubeClient(self.settings.namespace, context=self.settings.kube_context,
                          page_size=self.settings.list_page_size)
        try:
            kube.create_secret(self.settings.runtime_database_secret,
                               {"url": roles.runtime_database_url(self.settings)})
        finally:
            kube.close()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self._children:
                if child.poll() is not None:
                    raise PlatformUnreachable(f"{child.args!r} exited with code "
                                              f"{child.returncode} while starting")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise PlatformUnreachable(f"the API at {self.url} did not become ready in {timeout} s")

    def wait(self) -> int:
        """Block until a child exits (or we are told to stop); its exit code."""
        while True:
            for child in self._children:
                code = child.poll()
                if code is not None:
                    return code
            time.sleep(0.2)

    def stop(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children.clear()
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
        if self._watchdog is not None:
            if self._watchdog.stdin is not None:
                self._watchdog.stdin.close()  # everything is stopped: it exits at once
            try:
                self._watchdog.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None
        if self._started.get("dev") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
            self._started = {}

    def __enter__(self) -> DevStack:
        return self if self._children else self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid in Postgres's own postmaster.pid, if the file is there."""
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None
