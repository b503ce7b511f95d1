"""A forkserver for the local launcher: one process per attempt without paying interpreter start-up.

`python -m podfn_runtime` spends most of its life starting Python and
importing cloudpickle and psycopg (~180 ms of a ~240 ms trivial call on a
2-core machine). The forkserver is a long-lived helper (the *zygote*) started
from a fresh interpreter (`python -m podfn_platform.controller.forkserver`,
never a fork of the multi-threaded controller) that imports the runtime once
and then forks one child per attempt. Each child is still a process of its
own and keeps every property of the plain launcher:

- its environment is the attempt's (os.environ is replaced in the child);
- RLIMIT_AS for the `memory` hint;
- its own session (setsid), so Ctrl-C in a terminal never reaches it, and
  the controller can kill its whole process group (timeout, cancel);
- stdin from /dev/null, stdout and stderr to the attempt's output FIFO
  (opened by the zygote before it forks, so the controller may remove the
  FIFO's name as soon as the zygote has answered);
- it dies when the controller dies: the zygote has PR_SET_PDEATHSIG(SIGKILL)
  on the controller, every child has it on the zygote, and the zygote kills
  the process group of every child still running when it exits;
- its exit status (code or signal) is reported to the controller exactly as
  `Popen.returncode` would be: the zygote reaps its children and writes
  `{"exit": pid, "status": code}` on its stdout;
- nothing it started outlives it: the zygote is a child subreaper, so the
  descendants of a child that was killed (timeout, cancel, a crash) become the
  zygote's children, and the zygote kills every process tree it did not fork
  itself each time it reaps.

The zygote never connects to Postgres (a child must not inherit a
connection) and is single-threaded when it forks (it checks).

The supervisor (podfn_runtime/proxy.py): a cold attempt (one call, not a
warm or standing worker) never connects to Postgres. The zygote forks, once,
a supervisor process that holds a few connections as the runtime role and
runs each child's protocol statements over a socket of the child's own, and
is the child's output tee too; before the child exists, the zygote hands the
supervisor the other end of that socket bound to the child's call and
attempt, and the supervisor forwards nothing else (only protocol statements,
only for that call and attempt, each still needing the attempt's secret). A
cold call so costs no Postgres backend, no authentication and no tee fork.
The supervisor leaves the zygote's session and signals and dies with the
zygote; if it dies, its children connect by themselves and the next cold
attempt starts another. psycopg is not imported in the zygote until a child
needs a connection of its own (a smaller image forks faster).

A spare: after each attempt it forks, the zygote forks the next attempt's
process ahead of time. The spare leaves the zygote's session and signals
and waits on a socket (without a supervisor, it first connects to Postgres
as the runtime role, the URL every attempt gets, and forks its output tee,
capture.py; the attempt's secret comes later, with the request). The next
request with that URL goes to it: the output descriptor (and its sockets to
the supervisor) over SCM_RIGHTS, then the request, and the spare runs it
exactly as a freshly forked child would. A cold call so waits for no fork.
A spare that dies waiting is reaped quietly and the next request forks afresh.

Protocol (one JSON object per line): the controller writes
`{"id", "env", "log", "memory"}` on the zygote's stdin; the zygote answers
`{"id", "pid"}` (or `{"id", "error"}`) at once and `{"exit": pid, "status": n}`
when that child ends. EOF on stdin means: kill every child, exit.

Simplification: a forked child inherits the zygote's interpreter settings,
so interpreter-level variables in the attempt's `env` (PYTHONPATH,
PYTHONHASHSEED, PYTHONMALLOC, ...) do not take effect as they would for a
fresh `python`; the local launcher uses the plain path for an attempt whose
env sets any PYTHON* variable.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import gc
import io
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
SUPERVISOR_NAME = b"podfn-supervis"  # the 15 bytes a process name holds


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _send(out: Any, message: dict[str, Any]) -> None:
    out.write((json.dumps(message) + "\n").encode())
    out.flush()


def _leave_zygote(zygote_pid: int, libc: Any) -> None:
    """In a forked child, first thing: a session of its own, death with the zygote, and
    none of the zygote's signal handling."""
    os.setsid()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote_pid:  # the zygote died before prctl took effect
        os._exit(1)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_spare(sock: socket.socket, url: str, zygote_pid: int, libc: Any,
               keep_fds: list[int], supervised: bool) -> None:
    """In a child forked ahead of its request: wait for the request and run it. Without
    a supervisor, connect to Postgres as the runtime role (the URL every attempt gets)
    and fork the output tee first; the connection is this child's own, made after the
    fork; it serves one attempt, like any other."""
    try:
        _leave_zygote(zygote_pid, libc)
        from podfn_runtime import capture, database
        from podfn_runtime import main as runtime_main

        connection = None
        if not supervised:
            try:
                connection = database.connect(url)
            except Exception:  # the runtime connects (and retries) by itself
                connection = None
            capture.start_tee()  # its output tee too, while nothing waits for it
        _, fds, _, _ = socket.recv_fds(sock, 16, 3)
        if not fds:
            os._exit(0)  # the zygote is done with us
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        sock.close()
        request = json.loads(b"".join(chunks))
        keep = capture.tee_descriptors()
        if connection is not None and len(fds) == 1:
            runtime_main.use_connection(connection)
            keep.append(connection.pgconn.socket)
        proxy = (fds[1], fds[2]) if len(fds) == 3 else None
        _run_child(request, fds[0], zygote_pid, libc, keep_fds, left=True, keep_open=keep,
                   proxy=proxy)
    finally:
        os._exit(1)


def _run_supervisor(control: socket.socket, url: str, zygote_pid: int, libc: Any) -> None:
    """The supervisor process (podfn_runtime/proxy.py): our code only, no call's."""
    try:
        _leave_zygote(zygote_pid, libc)
        libc.prctl(_PR_SET_NAME, SUPERVISOR_NAME)  # for ps, top and the tests
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)  # fd 2 stays the controller's stderr, for its warnings
        keep = control.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 16)
        import logging

        from podfn_runtime.proxy import Supervisor

        # Its warnings go to stderr as before, not to the handler the zygote built for
        # attempts (podfn_runtime.main.prepare_log), whose descriptor is closed here.
        runtime_log = logging.getLogger("podfn.runtime")
        runtime_log.handlers.clear()
        runtime_log.propagate = True
        runtime_log.setLevel(logging.NOTSET)
        Supervisor(url, control).run()
    finally:
        os._exit(0)


def _run_child(request: dict[str, Any], output: int, zygote_pid: int, libc: Any,
               keep_fds: list[int], *, left: bool = False,
               keep_open: list[int] | None = None,
               proxy: tuple[int, int] | None = None) -> None:
    """In the forked child: become the attempt's process, run the runtime, never return.
    `left`: _leave_zygote was done already (a spare); `keep_open`: descriptors of its
    own to keep (its connection); `proxy`: its sockets to the supervisor (statements,
    tee)."""
    code = 1
    try:
        if not left:
            _leave_zygote(zygote_pid, libc)
        memory = request.get("memory")
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        null = os.open(os.devnull, os.O_RDONLY)
        os.set_blocking(output, True)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        for fd in {null, output, *keep_fds}:
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.close(fd)
        from podfn_runtime import main as runtime_main

        low = 3
        for fd in sorted([*(keep_open or []), *(proxy or ()),
                          *runtime_main.prepared_log_descriptors()]):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 256)
        # PYTHONUNBUFFERED semantics on the new descriptors.
        stdin = open(0, closefd=False)  # noqa: SIM115
        stdout = io.TextIOWrapper(open(1, "wb", buffering=0, closefd=False),  # noqa: SIM115
                                  write_through=True)
        stderr = io.TextIOWrapper(open(2, "wb", buffering=0, closefd=False),  # noqa: SIM115
                                  write_through=True, errors="backslashreplace")
        sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
        # The runtime logs to sys.__stderr__: point the originals at the new streams too.
        setattr(sys, "__stdin__", stdin)  # noqa: B010
        setattr(sys, "__stdout__", stdout)  # noqa: B010
        setattr(sys, "__stderr__", stderr)  # noqa: B010
        _replace_environment(request["env"])
        sys.argv = [sys.argv[0]]
        from podfn_runtime.main import main
        if proxy is not None:
            from podfn_runtime import capture
            from podfn_runtime.proxy import ProxyConnection

            runtime_main.use_proxy(ProxyConnection(socket.socket(fileno=proxy[0])))
            capture.use_shared_tee(socket.socket(fileno=proxy[1]))

        try:
            code = main([])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    finally:
        os._exit(code)


def _replace_environment(env: dict[str, str]) -> None:
    """Make os.environ exactly `env`, touching only what differs: most of an attempt's
    variables are the zygote's own (the launcher's base environment), and a putenv
    and an unsetenv per variable for all of them was a fifth of a millisecond of
    every cold call."""
    for key in [key for key in os.environ if key not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _identity(value: Any) -> Any:
    return value


def _rehearse() -> None:
    """Once, in the zygote: what every attempt would otherwise do for the first time in
    its own process. A forked child inherits caches and loaded modules, but not work
    it has to redo: the module a client's payload imports to rebuild its code objects
    (podfn_runtime.sources, ~0.4 ms per call when each child imported it), the codec
    and error-handler lookups of its streams, OpenSSL's first digest, and the first
    unpickling and pickling of a function and its result. Nothing here touches a
    descriptor, a database or the environment."""
    import codecs
    import hashlib
    import logging

    import cloudpickle

    import podfn_runtime.sources  # noqa: F401
    from podfn_runtime import main as runtime_main

    for name in ("utf-8", "ascii", "latin-1"):
        codecs.lookup(name)
    for handler in ("strict", "replace", "backslashreplace", "surrogateescape"):
        codecs.lookup_error(handler)
    codecs.getincrementaldecoder("utf-8")(errors="replace").decode(b"podfn")
    hashlib.sha256(b"podfn").hexdigest()
    record = logging.LogRecord("podfn.runtime", logging.INFO, __file__, 0, "%s %d",
                               ("call", 1), None)
    logging.Formatter("%(asctime)s podfn-runtime %(levelname)s %(message)s").format(record)
    outcome = runtime_main.execute(cloudpickle.dumps(_identity),
                                   cloudpickle.dumps(((1,), {})), {})
    assert isinstance(outcome, runtime_main.Result) and outcome.pickled is not None
    cloudpickle.loads(outcome.pickled)


def _fork_helper(kind: socket.SocketKind, url: str,
                 run: Callable[[socket.socket], None]) -> _Helper | None:
    """A child of the zygote that `run`s (and never returns) with its end of a socket
    pair; the zygote's end in the _Helper. None if it cannot be forked."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        ours.close()
        run(theirs)
        os._exit(1)  # (run never returns)
    theirs.close()
    return _Helper(pid, ours, url)


class _Helper:
    """A child of the zygote that is not an attempt (yet), and the zygote's socket to it:
    the spare, forked ahead of the next request (Zygote.fork_spare), or the supervisor,
    which runs protocol statements and tees output for cold attempts (proxy.py). Each
    serves the runtime database `url`."""

    def __init__(self, pid: int, sock: socket.socket, url: str) -> None:
        self.pid = pid
        self.sock = sock
        self.url = url


class Zygote:
    def __init__(self) -> None:
        self.libc = _libc()
        self.children: set[int] = set()
        # The next attempt's process, forked and connected to Postgres while the
        # zygote waits: a cold call does not wait for a fork and a new backend.
        self.spare: _Helper | None = None
        # Started with the first cold attempt: it holds the runtime role's connections
        # for every cold attempt (podfn_runtime/proxy.py).
        self.supervisor: _Helper | None = None
        # A supervised child's call and attempt, and those the supervisor says are
        # recorded (their exits go to the controller marked so: it sends no `fail`).
        self.bound: dict[int, tuple[str, int]] = {}
        self.recorded: set[tuple[str, int]] = set()
        self.sel = selectors.DefaultSelector()
        self.out = os.fdopen(os.dup(1), "wb")
        self.stdin_fd = 0
        self.buffer = b""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def serve(self) -> None:
        # Everything an attempt imports anyway, imported once here.
        import podfn_runtime.main
        import podfn_runtime.proxy
        import podfn_runtime.worker
        from podfn_runtime import reaper
        from podfn_runtime.queries import protocol

        reaper.become_subreaper()
        protocol()
        _rehearse()
        podfn_runtime.main.prepare_log()
        # Nothing of ours writes to fd 1 but the protocol; keep prints off it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: None)  # handled as EOF, below
        signal.set_wakeup_fd(self.wake_w)
        gc.freeze()  # children share the imported modules' pages
        _send(self.out, {"ready": os.getpid()})
        sel = self.sel
        sel.register(self.stdin_fd, selectors.EVENT_READ, "stdin")
        sel.register(self.wake_r, selectors.EVENT_READ, "signal")
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "supervisor":
                        self.read_notices()
                    elif key.data == "signal":
                        got = b""
                        with contextlib.suppress(BlockingIOError):
                            got = os.read(self.wake_r, 512)
                        self.reap()
                        if signal.SIGTERM.value.to_bytes(1, "little") in got:
                            return
                    elif not self.read_requests():
                        return
                self.reap()
        finally:
            self.kill_all()

    def read_requests(self) -> bool:
        try:
            chunk = os.read(self.stdin_fd, 65536)
        except InterruptedError:
            return True
        if not chunk:
            return False
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self.spawn(json.loads(line), line)
        return True

    def spawn(self, request: dict[str, Any], raw: bytes = b"") -> None:
        """Start the attempt `request` (`raw`: the line it was read from, handed to a
        spare as it is rather than encoded again)."""
        if threading.active_count() != 1:
            _send(self.out, {"id": request["id"],
                             "error": "the forkserver is not single-threaded"})
            return
        try:
            # Non-blocking: fails (ENXIO) rather than hangs if the reader is gone.
            output = os.open(request["log"], os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            _send(self.out, {"id": request["id"], "error": f"cannot open the output: {exc}"})
            return
        env = request.get("env") or {}
        url = env.get("PODFN_RUNTIME_DATABASE_URL")
        proxy = self.supervise(env, url)
        if proxy is None and "psycopg" not in sys.modules:
            # A runtime that connects by itself (a warm or standing worker): psycopg,
            # left out of this image for the cold attempts' sake (a smaller image forks
            # faster; they never connect), is imported once here for all later ones.
            import psycopg.rows  # noqa: F401

            gc.freeze()
        pid = self.hand_to_spare(raw or json.dumps(request).encode(), output, url, proxy)
        if pid is None:
            try:
                pid = os.fork()
            except OSError as exc:
                os.close(output)
                for fd in proxy or ():
                    os.close(fd)
                _send(self.out, {"id": request["id"], "error": f"fork failed: {exc}"})
                return
            if pid == 0:
                _run_child(request, output, os.getppid(), self.libc, self.own_fds(),
                           proxy=proxy)
        os.close(output)
        for fd in proxy or ():
            os.close(fd)
        self.children.add(pid)
        if proxy is not None:
            self.bound[pid] = (env["PODFN_CALL_ID"], int(env["PODFN_ATTEMPT"]))
        _send(self.out, {"id": request["id"], "pid": pid})
        if url:
            self.fork_spare(url)

    def own_fds(self) -> list[int]:
        fds = [self.out.fileno(), self.wake_r, self.wake_w, self.stdin_fd]
        if self.spare is not None:
            fds.append(self.spare.sock.fileno())
        if self.supervisor is not None:
            fds.append(self.supervisor.sock.fileno())
        return fds

    def supervise(self, env: dict[str, str], url: str | None) -> tuple[int, int] | None:
        """For a cold attempt (one call, not a warm or standing worker): its two sockets
        to the supervisor (statements, tee), whose ends the supervisor got bound to its
        call and attempt before the child can send anything; None: it connects by itself."""
        call_id, attempt = env.get("PODFN_CALL_ID"), env.get("PODFN_ATTEMPT", "")
        if not url or not call_id or not attempt.isdigit() or env.get("PODFN_WARM") \
                or env.get("PODFN_WORKER"):
            return None
        supervisor = self.supervisor or self.start_supervisor(url)
        if supervisor is None or supervisor.url != url:
            return None
        db_ours, db_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tee_ours, tee_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # With the secret, the supervisor claims the call while the child starts.
            bind = {"id": call_id, "attempt": int(attempt),
                    "secret": env.get("PODFN_ATTEMPT_SECRET")}
            socket.send_fds(supervisor.sock, [json.dumps(bind).encode()],
                            [db_theirs.fileno(), tee_theirs.fileno()])
        except OSError:  # it died: the next cold attempt starts another (reap() takes it)
            db_ours.close()
            tee_ours.close()
            self.drop_supervisor()
            return None
        finally:
            db_theirs.close()
            tee_theirs.close()
        return db_ours.detach(), tee_ours.detach()

    def start_supervisor(self, url: str) -> _Helper | None:
        self.supervisor = _fork_helper(socket.SOCK_SEQPACKET, url, lambda theirs: _run_supervisor(
            theirs, url, os.getppid(), self.libc))
        if self.supervisor is not None:
            self.sel.register(self.supervisor.sock.fileno(), selectors.EVENT_READ, "supervisor")
        return self.supervisor

    def drop_supervisor(self) -> None:
        """The supervisor is gone (or unreachable): the next cold attempt starts another."""
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(supervisor.sock.fileno())
            supervisor.sock.close()

    def read_notices(self) -> None:
        """Take the supervisor's notices: `{"recorded": [call, attempt]}` for each cold
        attempt whose outcome it saw recorded (proxy.py). It sends one before it
        answers the child, so a child's notice is here before the child can exit."""
        supervisor = self.supervisor
        if supervisor is None:
            return
        while True:
            try:
                data = supervisor.sock.recv(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # it is gone: reap() collects it
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(supervisor.sock.fileno())
                return
            with contextlib.suppress(ValueError, TypeError, KeyError):
                call_id, attempt = json.loads(data)["recorded"]
                key = (str(call_id), int(attempt))
                if key in self.bound.values():  # (a child already reaped: nothing to mark)
                    self.recorded.add(key)

    def hand_to_spare(self, request: bytes, output: int,
                      url: str | None, proxy: tuple[int, int] | None) -> int | None:
        """The spare's pid once it has the request; None if there is no fitting spare."""
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        try:
            if spare.url != url:
                return None
            socket.send_fds(spare.sock, [b"r"], [output, *(proxy or ())])
            spare.sock.sendall(request)
            spare.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return None  # it died meanwhile: reap() collects it
        finally:
            spare.sock.close()  # a spare that got no request sees EOF and exits
        return spare.pid

    def fork_spare(self, url: str) -> None:
        if self.spare is not None:
            return
        supervised = self.supervisor is not None and self.supervisor.url == url
        self.spare = _fork_helper(socket.SOCK_STREAM, url, lambda theirs: _run_spare(
            theirs, url, os.getppid(), self.libc, self.own_fds(), supervised))

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                message: dict[str, Any] = {"exit": pid,
                                           "status": os.waitstatus_to_exitcode(status)}
                bound = self.bound.pop(pid, None)
                if bound is not None:
                    self.read_notices()
                    if bound in self.recorded:
                        self.recorded.discard(bound)
                        message["recorded"] = True
                _send(self.out, message)
                self.kill_orphans()
            elif self.spare is not None and pid == self.spare.pid:
                self.spare.sock.close()  # it died waiting: the next request forks afresh
                self.spare = None
            elif self.supervisor is not None and pid == self.supervisor.pid:
                self.read_notices()  # what it said before it died still holds
                self.drop_supervisor()

    def kill_orphans(self) -> None:
        """Kill the trees of processes re-parented to us: what dead attempts left running."""
        from podfn_runtime import reaper

        kids = reaper.children()
        if kids is not None:
            # Our children alone, not a scan of all of /proc: this runs at every exit,
            # on the one thread that also forks the next attempts.
            spare = {self.spare.pid} if self.spare is not None else set()
            if self.supervisor is not None:
                spare.add(self.supervisor.pid)
            for pid in kids - self.children - spare:
                reaper.kill_tree(pid, include_root=True)
            return
        me = os.getpid()
        for pid in reaper.descendants(me):
            if pid in self.children or reaper.parent_of(pid) != me or (
                    self.spare is not None and pid == self.spare.pid) or (
                    self.supervisor is not None and pid == self.supervisor.pid):
                continue
            reaper.kill_tree(pid, include_root=True)

    def kill_all(self) -> None:
        from podfn_runtime import reaper

        for pid in list(self.children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        reaper.kill_tree(os.getpid())


# -- the controller's side -----------------------------------------------------


class ForkServerError(Exception):
    """The forkserver could not start an attempt (or is gone)."""


ExitCallback = Callable[[int | None], None]  # exit status as Popen.returncode; None: lost
Callbacks = tuple[ExitCallback, Callable[[], None] | None]


class ForkServer:
    """Start attempts through a zygote; report each child's exit status to its callback."""

    def __init__(self, python: str, env: dict[str, str], *, start_timeout: float = 30.0) -> None:
        self._python = python
        self._env = env
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, tuple[threading.Event, dict[str, Any], Callbacks]] = {}
        self._callbacks: dict[int, Callbacks] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self.alive = False
        self.pid: int | None = None

    def start(self) -> ForkServer:
        parent = os.getpid()
        libc = _libc()

        def setup() -> None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

        self._proc = subprocess.Popen(
            [self._python, "-m", "podfn_platform.controller.forkserver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
            env={**self._env, "PODFN_FORKSERVER_PARENT": str(parent)},
            preexec_fn=setup, start_new_session=True, close_fds=True)
        self.pid = self._proc.pid
        self.alive = True
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"podfn-forkserver-{self._proc.pid}")
        self._reader.start()
        if not self._ready.wait(self._start_timeout) or not self.alive:
            self.close()
            raise ForkServerError("the forkserver did not start")
        return self

    def spawn(self, env: dict[str, str], log: str, memory: int | None,
              on_exit: ExitCallback, timeout: float = 30.0,
              on_recorded: Callable[[], None] | None = None) -> int:
        """Fork a child for one attempt; its pid. `on_exit` gets its status later;
        `on_recorded` is called just before it when the forkserver's supervisor saw the
        attempt record its outcome."""
        done = threading.Event()
        reply: dict[str, Any] = {}
        with self._lock:
            if not self.alive or self._proc is None or self._proc.stdin is None:
                raise ForkServerError("the forkserver is not running")
            self._next_id += 1
            rid = self._next_id
            self._pending[rid] = (done, reply, (on_exit, on_recorded))
            line = json.dumps({"id": rid, "env": env, "log": log, "memory": memory}) + "\n"
            try:
                self._proc.stdin.write(line.encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self._pending.pop(rid, None)
                raise ForkServerError(f"the forkserver is gone: {exc}") from exc
        if not done.wait(timeout):
            with self._lock:
                self._pending.pop(rid, None)
            raise ForkServerError("the forkserver did not answer")
        if "pid" not in reply:
            raise ForkServerError(reply.get("error", "the forkserver is gone"))
        return int(reply["pid"])

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "ready" in message:
                self._ready.set()
            elif "id" in message:
                with self._lock:
                    entry = self._pending.pop(message["id"], None)
                    if entry is not None and "pid" in message:
                        self._callbacks[int(message["pid"])] = entry[2]
                if entry is not None:
                    entry[1].update(message)
                    entry[0].set()
            elif "exit" in message:
                with self._lock:
                    callbacks = self._callbacks.pop(int(message["exit"]), None)
                if callbacks is not None:
                    on_exit, on_recorded = callbacks
                    if message.get("recorded") and on_recorded is not None:
                        on_recorded()
                    on_exit(int(message["status"]))
        # EOF: the zygote is gone, and (PDEATHSIG) every child with it.
        with self._lock:
            self.alive = False
            pending, self._pending = self._pending, {}
            lost, self._callbacks = self._callbacks, {}
        self._ready.set()
        for done, _, _ in pending.values():
            done.set()
        for on_exit, _ in lost.values():
            on_exit(None)

    def close(self, timeout: float = 10.0) -> None:
        """End the zygote; it kills every child still running."""
        proc = self._proc
        if proc is None:
            return
        with self._lock:
            self.alive = False
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> int:
    # The zygote dies with the controller that started it (set again in
    # case the launcher could not; harmless when it did).
    libc = _libc()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.environ.get("PODFN_FORKSERVER_PARENT")
    if parent and os.getppid() != int(parent):
        return 1
    Zygote().serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
