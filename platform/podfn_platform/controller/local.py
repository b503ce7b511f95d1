"""The local launcher: each attempt is its own process running the runtime.

This is the embedded default (a laptop, CI). It maps outcomes as a pod would:
the `memory` hint becomes an address-space limit (RLIMIT_AS; stricter than a
pod's cgroup limit, since it counts virtual memory), `timeout` kills the
process at its deadline, and the process gets SIGKILL when the controller
dies (PR_SET_PDEATHSIG), so a restarted controller knows every attempt it
did not launch itself is gone. Hints it cannot apply (gpu, image,
node_selector, ...) are accepted and ignored, with a debug log.

An attempt's stdout and stderr go to a pipe, never a file: a thread keeps
the last OUTPUT_TAIL_BYTES (for the failure reason, as a pod's last log lines
would be) and drops the rest, so a chatty function costs a bounded amount of
memory and leaves nothing on disk, however the controller ends. Exit code 75
(the runtime's EXIT_DISRUPTED: the database stayed unreachable) is a
disruption. Stopping an attempt kills its whole process tree (reaper.py);
the runtime kills what its call started when the call ends.

On Linux, attempts are forked from a forkserver (forkserver.py) that has
the runtime's imports done, so a process per attempt costs a fork instead of
an interpreter start; every property above holds for those processes too.
`PODFN_LOCAL_FORKSERVER=0`, another platform, or a forkserver that cannot
start means the plain path: `python -m podfn_runtime` per attempt.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import ctypes.util
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from podfn.settings import default_secrets_dir
from podfn.spec import memory_bytes
from podfn_platform.controller.environment import base_environment, local_secrets
from podfn_platform.controller.forkserver import ForkServer, ForkServerError
from podfn_platform.controller.launcher import Attempt, Exit, Unfinished
from podfn_runtime import reaper
from podfn_runtime.main import EXIT_DISRUPTED
from podfn_runtime.termination import EXIT_TERMINATED

log = logging.getLogger("podfn.controller.local")

_NO_GPU = ("gpu={gpu} cannot be honoured: the local launcher runs calls as processes on this "
           "machine, without GPUs; run on Kubernetes (PODFN_LAUNCHER=kubernetes), or drop the "
           "hint for local runs, e.g. f.options(gpu=0).remote(...)")
_IGNORED_HINTS = ("image", "node_selector", "tolerations", "labels", "annotations",
                  "service_account", "pod_patch")
_TAIL_BYTES = 2000  # of the output, quoted in a failure's reason
OUTPUT_TAIL_BYTES = 8192  # of the output, kept while the attempt runs
_PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def _child_setup(memory_limit: int | None) -> Callable[[], None]:
    def setup() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    return setup


class OutputTail:
    """Drain a pipe from a thread, keeping only its last `limit` bytes."""

    def __init__(self, fd: int, limit: int = OUTPUT_TAIL_BYTES) -> None:
        self._fd = fd
        self._limit = limit
        self._buffer = bytearray()
        self._dropped = 0
        self._stop = threading.Event()
        self._ended = threading.Event()
        # Not threading.Thread: its start() waits until the new thread runs, which on a
        # busy machine holds up the attempt's launch (the FIFO or pipe holds what the
        # attempt writes meanwhile).
        _thread.start_new_thread(self._drain, ())

    def _drain(self) -> None:
        try:
            self._read()
        finally:
            self._ended.set()

    def _read(self) -> None:
        os.set_blocking(self._fd, False)
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_READ)
            try:
                while not self._stop.is_set():
                    if not sel.select(0.5):
                        continue
                    try:
                        chunk = os.read(self._fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return  # every writer closed it
                    self._buffer += chunk
                    if len(self._buffer) > self._limit:
                        extra = len(self._buffer) - self._limit
                        self._dropped += extra
                        del self._buffer[:extra]
            finally:
                os.close(self._fd)

    def text(self, limit: int = _TAIL_BYTES, wait: float = 10.0) -> str:
        """The last `limit` bytes, after the writers closed the pipe (or `wait` s).

        The runtime's tee process may still be copying a burst of output when the
        runtime exits (20 MiB took over 2 s on a loaded machine): its last words are
        the ones worth keeping, so wait for the end of the pipe, within reason."""
        self._ended.wait(wait)
        self._stop.set()  # a writer that outlived the attempt does not keep us reading
        data = bytes(self._buffer[-limit:])
        cut = self._dropped + len(self._buffer) > limit
        return ("..." if cut else "") + data.decode("utf-8", "replace").strip()


@dataclass
class _Process:
    attempt: Attempt
    output: OutputTail
    deadline: float | None
    pid: int = 0                  # 0 until the process exists
    ended_by: str | None = None   # "timeout" or "stopped" when we killed it
    done: threading.Event = field(default_factory=threading.Event)
    recorded: bool = False        # its runtime recorded the outcome (the forkserver says)


class LocalLauncher:
    """Runs attempts as local processes; `database_url` is the runtime role's (roles.py)."""

    # Warm workers of one pool the controller starts by default: they are processes
    # of this machine, so past a couple per core they only take CPU from each other,
    # the API and Postgres (a warm map of 1,000 trivial calls on 2 cores: ~450
    # calls/s with 32 workers, ~650 with 4; docs/benchmarks.md).
    warm_pool_workers = 2 * (os.cpu_count() or 1)

    def __init__(self, database_url: str, *, on_exit: Callable[[], None] = lambda: None,
                 python: str = sys.executable, env: dict[str, str] | None = None,
                 forkserver: bool | None = None, secrets_dir: Path | None = None,
                 max_result_bytes: int | None = None,
                 write_retry_seconds: float | None = None) -> None:
        self._database_url = database_url
        self._secrets_dir = secrets_dir or default_secrets_dir()
        self._max_result_bytes = max_result_bytes
        self._on_exit = on_exit
        self._python = python
        self._env = base_environment(env)
        if write_retry_seconds is not None:
            self._env["PODFN_RUNTIME_WRITE_RETRY_SECONDS"] = str(write_retry_seconds)
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], _Process] = {}
        self._exits: list[Exit] = []
        self._use_forkserver = sys.platform == "linux" if forkserver is None else forkserver
        self._forkserver: ForkServer | None = None
        self._fifo_dir: Path | None = None

    def start(self) -> None:
        pass

    @property
    def uses_forkserver(self) -> bool:
        """Whether attempts are (to be) forked from a forkserver rather than started plainly."""
        return self._use_forkserver

    @property
    def forkserver(self) -> ForkServer | None:
        """The running forkserver, if attempts are forked from one."""
        return self._forkserver

    def launch(self, attempt: Attempt) -> str:
        spec = attempt.spec
        if spec.get("gpu"):
            # Refused, not ignored: a GPU job run on CPUs would fail or crawl in ways
            # far harder to trace back to the hint than this one failure.
            with self._lock:
                self._exits.append(Exit(attempt, "fatal", _NO_GPU.format(gpu=spec["gpu"])))
            self._on_exit()
            return "refused:gpu"
        ignored = [h for h in _IGNORED_HINTS if spec.get(h)]
        if ignored:
            log.debug("call %s: the local launcher ignores %s", attempt.call_id, ", ".join(ignored))
        user_env = spec.get("env", {})
        try:
            secret_env = local_secrets(self._secrets_dir, spec.get("secrets") or [])
        except LookupError as exc:
            with self._lock:
                self._exits.append(Exit(attempt, "fatal", str(exc)))
            self._on_exit()
            return "not started"
        # Never this process's environment: a few start-up variables, the call's secrets,
        # then the attempt's own (the user's `env` wins over a secret's key, as on Kubernetes).
        env = {**self._env, **secret_env, **attempt.env,
               "PODFN_RUNTIME_DATABASE_URL": self._database_url}
        if self._max_result_bytes is not None:
            env["PODFN_MAX_RESULT_BYTES"] = str(self._max_result_bytes)
        memory = memory_bytes(spec["memory"]) if spec.get("memory") else None
        timeout = spec.get("timeout")
        # Interpreter-level variables only take effect in a fresh interpreter.
        server = None if any(k.startswith("PYTHON") for k in user_env) else self._server()
        if server is not None and self._fifo_dir is not None:
            try:
                return self._fork(server, attempt, env, memory, timeout)
            except ForkServerError as exc:
                log.warning("the forkserver could not start call %s (%s); starting a "
                            "process instead", attempt.call_id, exc)
        read_fd, write_fd = os.pipe()
        proc = _Process(attempt, OutputTail(read_fd),
                        time.monotonic() + timeout if timeout else None)
        with self._lock:
            self._running[attempt.key] = proc
        try:
            popen = subprocess.Popen(
                [self._python, "-m", "podfn_runtime"],
                stdin=subprocess.DEVNULL, stdout=write_fd, stderr=subprocess.STDOUT,
                env=env, preexec_fn=_child_setup(memory), start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            with self._lock:
                self._running.pop(attempt.key, None)
            raise
        finally:
            os.close(write_fd)
        proc.pid = popen.pid
        threading.Thread(target=self._wait, args=(proc, popen), daemon=True,
                         name=f"podfn-wait-{popen.pid}").start()
        return f"pid:{proc.pid}"

    def _fork(self, server: ForkServer, attempt: Attempt, env: dict[str, str],
              memory: int | None, timeout: float | None) -> str:
        """Start the attempt through the forkserver, its output through a FIFO.

        The zygote opens the FIFO's write end before it forks and replies after,
        so the FIFO's name can go as soon as the reply is in: nothing stays on disk.
        """
        assert self._fifo_dir is not None
        fifo = self._fifo_dir / f"{attempt.call_id}-{attempt.attempt}"
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
        try:
            read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        except BaseException:
            fifo.unlink(missing_ok=True)
            raise
        proc = _Process(attempt, OutputTail(read_fd),
                        time.monotonic() + timeout if timeout else None)
        with self._lock:
            self._running[attempt.key] = proc
        try:
            proc.pid = server.spawn(env, str(fifo), memory, lambda code: self._finish(proc, code),
                                    on_recorded=lambda: setattr(proc, "recorded", True))
        except BaseException:
            with self._lock:
                self._running.pop(attempt.key, None)
            proc.output.text(wait=0)
            raise
        finally:
            fifo.unlink(missing_ok=True)
        return f"pid:{proc.pid}"

    def _server(self) -> ForkServer | None:
        """The forkserver, (re)started if needed; None when attempts run the plain way."""
        if not self._use_forkserver:
            return None
        if self._forkserver is not None and self._forkserver.alive:
            return self._forkserver
        if self._forkserver is not None:
            log.warning("the local forkserver died; starting a new one")
            self._forkserver.close()
        try:
            self._fifo_dir = self._fifo_dir or _fifo_dir()
            self._forkserver = ForkServer(self._python, self._env).start()
        except (ForkServerError, OSError) as exc:
            log.warning("cannot start the local forkserver (%s); every attempt starts a "
                        "fresh interpreter", exc)
            self._use_forkserver = False
            self._forkserver = None
        return self._forkserver

    def _wait(self, proc: _Process, popen: subprocess.Popen[bytes]) -> None:
        self._finish(proc, popen.wait())

    def _finish(self, proc: _Process, code: int | None) -> None:
        """The process ended with `code` (as Popen.returncode), or was lost with the forkserver."""
        output = proc.output.text()
        if code is None:
            exit_ = Exit(proc.attempt, "disrupted",
                         "the local forkserver running the attempt died")
            if proc.ended_by:
                exit_ = self._describe(proc, -signal.SIGKILL, output)
        else:
            exit_ = self._describe(proc, code, output)
            if proc.recorded and exit_.kind == "exited":
                exit_ = replace(exit_, recorded=True)
        with self._lock:
            # Under the key it was launched with (a warm worker's attempt moves on).
            for key in [k for k, p in self._running.items() if p is proc]:
                del self._running[key]
            self._exits.append(exit_)
        proc.done.set()
        self._on_exit()

    def _describe(self, proc: _Process, code: int, output: str) -> Exit:
        attempt = proc.attempt
        if proc.ended_by == "timeout":
            return Exit(attempt, "timeout",
                        f"timed out after {attempt.spec['timeout']} s (the `timeout` hint)")
        if proc.ended_by == "stopped":
            return Exit(attempt, "stopped", "stopped by the controller")
        memory = attempt.spec.get("memory")
        if code in (-signal.SIGTERM, EXIT_TERMINATED):
            # The launcher never sends SIGTERM and a function has no reason to: it
            # is how an operator, a kubelet or a shutdown stops a process (the
            # runtime's handler exits with 128 + SIGTERM, termination.py). SIGKILL
            # stays the user's (it is the out-of-memory killer's signal).
            return Exit(attempt, "disrupted", "the process was stopped by SIGTERM from outside "
                        "the call (not the function's failure)", exit_code=code)
        if code < 0:
            name = signal.Signals(-code).name
            reason = f"the process was killed by {name}"
            if name == "SIGKILL" and memory:
                reason += f" (possibly out of memory; memory limit {memory})"
        elif memory and "MemoryError" in output:
            reason = f"memory limit {memory} exceeded (exit code {code})"
        elif code == EXIT_DISRUPTED:
            return Exit(attempt, "disrupted", "the runtime could not reach the database to record "
                        f"the outcome (exit code {code}); last output:\n{output}",
                        exit_code=code)
        elif code == 0:
            reason = "the runtime exited without recording a result"
        else:
            reason = f"the process exited with code {code} before recording a result"
        if output:
            reason += f"; last output:\n{output}"
        return Exit(attempt, "exited", reason, exit_code=code)

    def _kill(self, key: tuple[str, int], why: str) -> _Process | None:
        with self._lock:
            proc = self._running.get(key) or next(
                (p for p in self._running.values() if p.attempt.key == key), None)
            if proc is None or proc.ended_by:
                return None
            proc.ended_by = why
        if proc.pid:
            # Its descendants first (setsid ones left its group), then the group.
            reaper.kill_tree(proc.pid, include_root=True)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return proc

    def stop(self, key: tuple[str, int]) -> None:
        self._kill(key, "stopped")

    def workers(self) -> dict[str, Attempt]:
        """Warm workers by name: those running, and those whose exit is not yet taken
        (their in-flight attempt is recorded through the exit, not as an orphan)."""
        with self._lock:
            out = {p.attempt.worker: p.attempt for p in self._running.values()
                   if p.attempt.worker}
            out.update({e.attempt.worker: e.attempt for e in self._exits if e.attempt.worker})
        return out

    def rebind(self, worker: str, attempt: Attempt | None, running_seconds: float) -> None:
        """The warm worker `worker` runs `attempt` now (running for `running_seconds`),
        or nothing (None: idle, no deadline). Its process keeps its memory limit."""
        with self._lock:
            proc = next((p for p in self._running.values() if p.attempt.worker == worker), None)
            if proc is None or proc.ended_by:
                return
            if attempt is None:
                proc.deadline = None
                return
            if attempt.key != proc.attempt.key:
                timeout = attempt.spec.get("timeout")
                proc.deadline = (time.monotonic() - running_seconds + timeout
                                 if timeout else None)
                proc.attempt = attempt

    def active(self) -> list[Attempt]:
        with self._lock:
            return [p.attempt for p in self._running.values()]

    def exits(self) -> list[Exit]:
        with self._lock:
            out, self._exits = self._exits, []
        return out

    def next_deadline(self) -> float | None:
        now = time.monotonic()
        with self._lock:
            deadlines = [p.deadline - now for p in self._running.values()
                         if p.deadline is not None and not p.ended_by]
        return max(0.0, min(deadlines)) if deadlines else None

    def settle(self, exit_: Exit) -> None:
        pass

    def reconcile(self, unfinished: Unfinished, *, full: bool) -> None:
        self._enforce_deadlines()
        if full:
            self._adopt_orphans(unfinished())

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [k for k, p in self._running.items()
                       if p.deadline is not None and p.deadline <= now and not p.ended_by]
        for key in expired:
            self._kill(key, "timeout")

    def _adopt_orphans(self, unfinished: list[Attempt]) -> None:
        """Processes die with the controller that started them: any we did not start is gone."""
        with self._lock:
            mine = (set(self._running) | {p.attempt.key for p in self._running.values()}
                    | {e.attempt.key for e in self._exits})
            self._exits += [
                Exit(a, "disrupted",
                     f"attempt {a.attempt} was lost when the controller running it stopped")
                for a in unfinished if a.key not in mine]

    def close(self) -> None:
        with self._lock:
            keys = list(self._running)
        for key in keys:
            proc = self._kill(key, "stopped")
            if proc:
                proc.done.wait(5)
        if self._forkserver is not None:
            self._forkserver.close()
            self._forkserver = None
        if self._fifo_dir is not None:
            shutil.rmtree(self._fifo_dir, ignore_errors=True)
            self._fifo_dir = None


_FIFO_PREFIX = "podfn-output-"
# Where FIFOs are made: a memory file system when there is one. A FIFO holds no
# data on disk, but on ext4 each mkfifo allocates an inode, and the allocator
# passes over the inodes deleted in the last seconds one by one: a cold map,
# which makes and removes a FIFO per call, spent ~0.5-0.9 ms of the controller's
# CPU per call there (issue 12, seventh round; benchmarks/notes.md).
_MEMORY_FS = Path("/dev/shm")


def _fifo_bases() -> list[Path]:
    """Where this controller may make its FIFO directory, best first."""
    bases = [Path(tempfile.gettempdir())]
    if _MEMORY_FS.is_dir() and os.access(_MEMORY_FS, os.W_OK | os.X_OK):
        bases.insert(0, _MEMORY_FS)
    return bases


def _fifo_dir() -> Path:
    """A private directory for this controller's FIFOs, after removing those of dead controllers.

    Named after the controller's pid: a directory whose pid is gone was left by
    a controller that crashed (FIFOs are removed one by one as attempts start,
    but a crash between mkfifo and unlink could leave one). It is made on a
    memory file system when there is one (_MEMORY_FS), else in the temporary
    directory; both are searched for those left behind.
    """
    bases = _fifo_bases()
    for base in bases:
        for old in base.glob(f"{_FIFO_PREFIX}*"):
            pid = old.name.removeprefix(_FIFO_PREFIX).split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    prefix = f"{_FIFO_PREFIX}{os.getpid()}-"
    for base in bases[:-1]:
        with contextlib.suppress(OSError):
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    return Path(tempfile.mkdtemp(prefix=prefix, dir=bases[-1]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
