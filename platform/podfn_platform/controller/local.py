"""The local launcher: each attempt is its own process running the runtime.

This is the embedded default (a laptop, CI). It maps outcomes as a pod would:
the `memory` hint becomes an address-space limit (RLIMIT_AS; stricter than a
pod's cgroup limit, since it counts virtual memory), `timeout` kills the
process at its deadline, and the process gets SIGKILL when the controller
dies (PR_SET_PDEATHSIG), so a restarted controller knows every attempt it
did not launch itself is gone. Hints it cannot apply (gpu, image,
node_selector, ...) are accepted and ignored, with a debug log.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from podfn.spec import memory_bytes
from podfn_platform.controller.launcher import Attempt, Exit, Unfinished

log = logging.getLogger("podfn.controller.local")

_IGNORED_HINTS = ("gpu", "image", "node_selector", "tolerations", "labels", "annotations",
                  "service_account", "pod_patch")
_TAIL_BYTES = 2000
_PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def _child_setup(memory_limit: int | None) -> Callable[[], None]:
    def setup() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    return setup


@dataclass
class _Process:
    attempt: Attempt
    popen: subprocess.Popen[bytes]
    log_file: IO[bytes]
    deadline: float | None
    ended_by: str | None = None   # "timeout" or "stopped" when we killed it
    done: threading.Event = field(default_factory=threading.Event)


def tail(path: Path, limit: int = _TAIL_BYTES) -> str:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - limit))
        text = fh.read().decode("utf-8", "replace")
    return ("..." if size > limit else "") + text.strip()


class LocalLauncher:
    def __init__(self, database_url: str, *, on_exit: Callable[[], None] = lambda: None,
                 python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        self._database_url = database_url
        self._on_exit = on_exit
        self._python = python
        self._env = dict(os.environ if env is None else env)
        self._lock = threading.Lock()
        self._running: dict[tuple[str, int], _Process] = {}
        self._exits: list[Exit] = []

    def start(self) -> None:
        pass

    def launch(self, attempt: Attempt) -> str:
        spec = attempt.spec
        ignored = [h for h in _IGNORED_HINTS if spec.get(h)]
        if ignored:
            log.debug("call %s: the local launcher ignores %s", attempt.call_id, ", ".join(ignored))
        env = {**self._env, **spec.get("env", {}),
               "PODFN_DATABASE_URL": self._database_url,
               "PODFN_CALL_ID": attempt.call_id, "PODFN_ATTEMPT": str(attempt.attempt),
               "PYTHONUNBUFFERED": "1"}
        memory = memory_bytes(spec["memory"]) if spec.get("memory") else None
        # Closed by the thread that waits for the process.
        log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"podfn-{attempt.call_id}-{attempt.attempt}-",
                                               suffix=".log", delete=False)
        popen = subprocess.Popen(
            [self._python, "-m", "podfn_runtime"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_child_setup(memory), start_new_session=True, close_fds=True,
        )
        timeout = spec.get("timeout")
        proc = _Process(attempt, popen, log_file,
                        time.monotonic() + timeout if timeout else None)
        with self._lock:
            self._running[attempt.key] = proc
        threading.Thread(target=self._wait, args=(proc,), daemon=True,
                         name=f"podfn-wait-{popen.pid}").start()
        return f"pid:{popen.pid}"

    def _wait(self, proc: _Process) -> None:
        code = proc.popen.wait()
        proc.log_file.close()
        path = Path(proc.log_file.name)
        try:
            output = tail(path)
        finally:
            path.unlink(missing_ok=True)
        exit_ = self._describe(proc, code, output)
        with self._lock:
            self._running.pop(proc.attempt.key, None)
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
        if code < 0:
            name = signal.Signals(-code).name
            reason = f"the process was killed by {name}"
            if name == "SIGKILL" and memory:
                reason += f" (possibly out of memory; memory limit {memory})"
        elif memory and "MemoryError" in output:
            reason = f"memory limit {memory} exceeded (exit code {code})"
        elif code == 0:
            reason = "the runtime exited without recording a result"
        else:
            reason = f"the process exited with code {code} before recording a result"
        if output:
            reason += f"; last output:\n{output}"
        return Exit(attempt, "exited", reason, exit_code=code)

    def _kill(self, key: tuple[str, int], why: str) -> _Process | None:
        with self._lock:
            proc = self._running.get(key)
            if proc is None or proc.ended_by:
                return None
            proc.ended_by = why
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        return proc

    def stop(self, key: tuple[str, int]) -> None:
        self._kill(key, "stopped")

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
            mine = set(self._running) | {e.attempt.key for e in self._exits}
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
