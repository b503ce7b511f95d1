"""Capture everything a call writes to file descriptors 1 and 2, still echoing it.

Teeing `sys.stdout` catches `print` and nothing else: `logging` handlers,
`os.write(1, ...)`, child processes and C code write to the descriptors.
So for the call's duration descriptors 1 and 2 are pipes into a small tee
process forked from the runtime: it copies what arrives to the original
descriptors (the pod's log, or the local launcher's pipe, keeps showing it)
and hands the same bytes back to the runtime, where one reader thread gives
them to an `Output` (output.py), which stores them. The tee is a process, not
a thread, so that what the call wrote just before the runtime died (a
segfault in C code, `os._exit`, the OOM killer) still reaches the log; the
reaper spares it (reaper.spare). One tee serves every call of a runtime (a
warm worker runs many; a fork and a reap per call cost more than a trivial
call): each capture makes fresh pipes and hands their ends to the tee over
a socket (SCM_RIGHTS), so what one call wrote never mixes with the next
one's. The tee ends by itself once the runtime is gone (or said it is done,
`stop_tee`) and every pipe's writers are gone. A cold call on the local
forkserver forks no tee: the forkserver's supervisor runs the same tee loop
for it, on a thread of its own per call (proxy.py, `use_shared_tee`); it is
still not the call's process. The runtime's own log lines go
to a duplicate of the original stderr taken before the capture starts
(main.py), so they never mix with the user's output.
"""

from __future__ import annotations

import _thread
import codecs
import contextlib
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from podfn_runtime import reaper

# How long the end of the capture waits for what is still in a pipe; only a
# process that kept the descriptor open after the call (and survived the
# reaper) makes it wait this long.
_DRAIN_SECONDS = 2.0
_READ_SIZE = 64 * 1024
_STACK_BYTES = 256 * 1024
_MAX_FD = 1 << 20  # closerange's bound: close_range(2) makes the span free


class Sink(Protocol):
    def add(self, stream: str, text: str) -> None: ...


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of `data`; False if the descriptor is closed (a closed log must not stop
    the call)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return False
        view = view[written:]
    return True


@contextmanager
def _small_stack() -> Iterator[None]:
    """Threads started in the block get a small stack: under a `memory` hint (RLIMIT_AS)
    every thread's default 8 MiB stack counts, and the call's own threads need the room."""
    previous = threading.stack_size(_STACK_BYTES)
    try:
        yield
    finally:
        threading.stack_size(previous)


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread with a small stack (`_small_stack`)."""
    with _small_stack():
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
    return thread


class _Redirect:
    """Descriptor `fd` pointed into a pipe to the tee; `original` is where it pointed
    before, `back` the pipe on which the tee hands the same bytes to the runtime."""

    def __init__(self, fd: int, stream: str) -> None:
        self.fd = fd
        self.stream = stream
        self.original = os.dup(fd)
        self.into_tee, write_end = os.pipe()
        self.back, self.back_write = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def restore(self) -> None:
        os.dup2(self.original, self.fd)  # closes our write end of the pipe to the tee


def _tee(control: socket.socket) -> None:
    """The tee process: `tee_loop`, then exit. Only os and socket calls: it was forked
    from a threaded process."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # echo to the end; EOF ends us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        tee_loop(control)
    finally:
        os._exit(0)


def tee_loop(control: socket.socket) -> None:
    """For each capture the runtime hands over (per stream: the pipe from the call, the
    pipe back to the runtime, and the runtime's original descriptor) on `control`, copy
    the pipe to the original and back to the runtime until its writers are gone; return
    once the runtime closed `control` and every pipe has ended (closing `control`).
    Run by the runtime's own tee process, or by a thread of the local forkserver's
    supervisor (proxy.py), one per runtime."""
    targets: dict[int, int] = {}  # pipe from the call -> where it echoes
    backs: dict[int, int] = {}  # pipe from the call -> pipe back to the runtime
    try:
        listening = True
        while targets or listening:
            poller = select.poll()  # not select(): a supervisor's descriptors pass 1024
            for fd in list(targets) + ([control.fileno()] if listening else []):
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd == control.fileno():
                    try:
                        streams, fds, _, _ = socket.recv_fds(control, 16, 8)
                    except InterruptedError:
                        continue
                    except OSError:
                        streams, fds = b"", []
                    n = len(streams)
                    if not streams or len(fds) != 3 * n:
                        for extra in fds:
                            with contextlib.suppress(OSError):
                                os.close(extra)
                        listening = False
                        continue
                    for i in range(n):
                        targets[fds[i]] = fds[2 * n + i]
                        backs[fds[i]] = fds[n + i]
                    continue
                try:
                    data = os.read(fd, _READ_SIZE)
                except InterruptedError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    with contextlib.suppress(OSError):
                        os.close(targets.pop(fd))
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    with contextlib.suppress(OSError, KeyError):
                        os.close(backs.pop(fd))
                    continue
                _write_all(targets[fd], data)
                if fd in backs and not _write_all(backs[fd], data):
                    with contextlib.suppress(OSError):
                        os.close(backs.pop(fd))  # the runtime is gone: echo on regardless
    finally:
        for fd in [*targets, *targets.values(), *backs.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        control.close()


class _TeeProcess:
    """The tee, forked at the first capture and kept for every later one (a warm
    worker runs many calls): a fork and a reap per call cost more than the call."""

    def __init__(self) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            # Nothing of the runtime's stays open here but the socket: no copy of a
            # capture's pipe (its reader would never see the end), no connection, and
            # none of a forkserver's descriptors. What to echo to comes with each pipe.
            keep = theirs.fileno()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                if fd != keep:
                    os.dup2(null, fd)
            os.closerange(3, keep)
            os.closerange(keep + 1, _MAX_FD)
            _tee(theirs)
        theirs.close()
        self.pid = pid
        reaper.spare(pid)

    def hand(self, redirects: list[_Redirect]) -> None:
        """Give the tee this capture's pipes (it holds the only copies afterwards) and
        a copy of each descriptor they stand in for."""
        socket.send_fds(self.control, [bytes(r.fd for r in redirects)],
                        [r.into_tee for r in redirects] + [r.back_write for r in redirects]
                        + [r.original for r in redirects])

    def close(self) -> None:
        """No more captures: the tee ends once it has echoed what is still in the pipes."""
        self.control.close()
        _reap(self.pid)


class _SharedTee(_TeeProcess):
    """The local forkserver's supervisor as this runtime's tee (proxy.py): the same
    hand-over on a socket it gave us; no process of ours to fork or reap."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.pid = 0

    def close(self) -> None:
        self.control.close()


_tee_process: _TeeProcess | None = None


def use_shared_tee(control: socket.socket) -> None:
    """Hand captures to the tee at the other end of `control` instead of forking one."""
    global _tee_process
    _tee_process = _SharedTee(control)


def _handed_to_tee(redirects: list[_Redirect]) -> None:
    global _tee_process
    if _tee_process is not None:
        try:
            _tee_process.hand(redirects)
            return
        except OSError:  # the tee is gone (killed by someone): start another
            with contextlib.suppress(OSError):
                _tee_process.close()
    _tee_process = None
    tee = _TeeProcess()
    tee.hand(redirects)
    _tee_process = tee


def start_tee() -> None:
    """Fork the tee ahead of the first capture (main.py does it while Postgres starts
    the runtime's connection; the forkserver's spare before its attempt is known),
    so the call does not wait for the fork."""
    global _tee_process
    if _tee_process is None:
        _tee_process = _TeeProcess()


def tee_descriptors() -> list[int]:
    """The descriptors the runtime holds to talk to its tee (kept open by the
    forkserver's spare when it closes everything else)."""
    return [] if _tee_process is None else [_tee_process.control.fileno()]


def stop_tee() -> None:
    """The runtime is done with captures: let the tee finish echoing, then reap it,
    so that the end of the log is written before the process (a pod's PID 1) exits."""
    global _tee_process
    tee, _tee_process = _tee_process, None
    if tee is not None:
        tee.close()


class _Capture:
    """One capture's pipes back from the tee, as the reader sees them."""

    def __init__(self, redirects: list[_Redirect], sink: Sink) -> None:
        self.redirects = redirects
        self.sink = sink
        self.open = len(redirects)
        self.done = threading.Event()


class _Reader:
    """One thread, kept for the runtime's life, reading what the tee hands back for
    every capture (a warm worker captures once per call: a thread started and joined
    per call cost more than a trivial call). A capture's pipes are added through a
    wake-up pipe; its `done` is set once the tee closed them all."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._wake_read, self._wake_write = os.pipe()
        self._lock = threading.Lock()
        self._added: list[_Capture] = []
        self._dropped: list[_Capture] = []
        # Not threading.Thread: its start() waits until the new thread runs, and on a
        # busy machine the scheduler takes its time (up to a millisecond and more of a
        # cold call's latency); nothing here needs to wait for that.
        with _small_stack():
            _thread.start_new_thread(self._run, ())

    def add(self, capture: _Capture) -> None:
        with self._lock:
            self._added.append(capture)
        os.write(self._wake_write, b"+")

    def drop(self, capture: _Capture) -> None:
        """Stop reading `capture` (a writer we could not kill keeps its pipe open)."""
        with self._lock:
            self._dropped.append(capture)
        os.write(self._wake_write, b"-")

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_read, selectors.EVENT_READ, None)
            while True:
                for key, _ in selector.select():
                    if key.data is None:
                        self._changes(selector)
                    else:
                        self._read(selector, *key.data)

    def _changes(self, selector: selectors.BaseSelector) -> None:
        with contextlib.suppress(InterruptedError, BlockingIOError):
            os.read(self._wake_read, 4096)
        with self._lock:
            added, self._added = self._added, []
            dropped, self._dropped = self._dropped, []
        for capture in added:
            for redirect in capture.redirects:
                selector.register(redirect.back, selectors.EVENT_READ, (capture, redirect))
        for capture in dropped:
            for redirect in capture.redirects:
                if redirect.back >= 0:
                    selector.unregister(redirect.back)
                    self._close(redirect)
            capture.done.set()

    @staticmethod
    def _close(redirect: _Redirect) -> None:
        with contextlib.suppress(OSError):
            os.close(redirect.back)
        redirect.back = -1

    def _read(self, selector: selectors.BaseSelector, capture: _Capture,
              redirect: _Redirect) -> None:
        try:
            data = os.read(redirect.back, _READ_SIZE)
        except InterruptedError:
            return
        except OSError:
            data = b""
        if not data:
            selector.unregister(redirect.back)
            self._close(redirect)
            tail = redirect.decoder.decode(b"", final=True)
            if tail:
                capture.sink.add(redirect.stream, tail)
            capture.open -= 1
            if not capture.open:
                capture.done.set()
            return
        text = redirect.decoder.decode(data)
        if text:
            capture.sink.add(redirect.stream, text.replace("\x00", "\ufffd"))


_reader: _Reader | None = None


def _the_reader() -> _Reader:
    """The reader thread (a new one in a forked child: threads do not survive a fork)."""
    global _reader
    if _reader is None or _reader.pid != os.getpid():
        _reader = _Reader()
    return _reader


def start_reader() -> None:
    """Start the reader thread ahead of the first capture (main.py does it for a cold
    call on the local forkserver while the call's claim is on its way)."""
    _the_reader()


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()


@contextmanager
def capture_fds(sink: Sink) -> Iterator[None]:
    """Send what descriptors 1 and 2 receive during the block to `sink` (and on)."""
    _flush_python_streams()
    # Python's own streams write to the descriptors; line buffering gets a
    # print to the pipe when its line ends, not when an 8 KiB buffer fills.
    reconfigured = []
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and not getattr(stream, "line_buffering", True):
            with contextlib.suppress(Exception):
                reconfigure(line_buffering=True)
                reconfigured.append(stream)
    redirects = [_Redirect(1, "stdout"), _Redirect(2, "stderr")]
    try:
        _handed_to_tee(redirects)
    finally:
        for r in redirects:
            os.close(r.into_tee)
            os.close(r.back_write)
    capture = _Capture(redirects, sink)
    reader = _the_reader()
    reader.add(capture)
    try:
        yield
    finally:
        _flush_python_streams()
        for redirect in redirects:
            redirect.restore()
        # The tee lets go of a pipe when its last writer (we killed the rest) is gone.
        if not capture.done.wait(_DRAIN_SECONDS):
            reader.drop(capture)
            capture.done.wait()
        for redirect in redirects:
            os.close(redirect.original)
        for stream in reconfigured:
            with contextlib.suppress(Exception):
                getattr(stream, "reconfigure")(line_buffering=False)  # noqa: B009


def _exited_within(pid: int, seconds: float) -> None:
    """Wait for `pid` to exit, at most `seconds`, woken by its exit (a pidfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return  # too old a kernel, or gone: the polling below does it
    try:
        select.select([pidfd], [], [], seconds)
    finally:
        os.close(pidfd)


def _reap(pid: int) -> None:
    deadline = time.monotonic() + _DRAIN_SECONDS
    _exited_within(pid, _DRAIN_SECONDS)
    try:
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)  # a writer we could not kill kept it open
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
    except ChildProcessError:
        pass  # already reaped (the reaper collects any child of ours)
    finally:
        reaper.unspare(pid)
