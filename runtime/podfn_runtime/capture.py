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
reaper spares it (reaper.spare) and it ends by itself once every writer is
gone. The runtime's own log lines go
to a duplicate of the original stderr taken before the capture starts
(main.py), so they never mix with the user's output.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import selectors
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from podfn_runtime import reaper

# How long the end of the capture waits for what is still in a pipe; only a
# process that kept the descriptor open after the call (and survived the
# reaper) makes the reader wait this long.
_DRAIN_SECONDS = 2.0
_READ_SIZE = 64 * 1024
_STACK_BYTES = 256 * 1024


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


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread with a small stack: under a `memory` hint (RLIMIT_AS) every
    thread's default 8 MiB stack counts, and the call's own threads need the room."""
    previous = threading.stack_size(_STACK_BYTES)
    try:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
    finally:
        threading.stack_size(previous)
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


def _tee(redirects: list[_Redirect]) -> None:
    """The tee process: copy each pipe to its original descriptor and back to the runtime
    until every writer is gone. Only os calls: it was forked from a threaded process."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # echo to the end; EOF ends us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for fd in (1, 2):
            os.close(fd)  # our copies of the pipes' write ends: EOF must come
        for r in redirects:
            os.close(r.back)
        inputs = {r.into_tee: r for r in redirects}
        backs = {r.into_tee: r.back_write for r in redirects}
        while inputs:
            ready, _, _ = select.select(list(inputs), [], [])
            for fd in ready:
                try:
                    data = os.read(fd, _READ_SIZE)
                except InterruptedError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    del inputs[fd]
                    with contextlib.suppress(OSError):
                        os.close(backs.pop(fd))
                    continue
                _write_all(inputs[fd].original, data)
                if fd in backs and not _write_all(backs[fd], data):
                    with contextlib.suppress(OSError):
                        os.close(backs.pop(fd))  # the runtime is gone: echo on regardless
    finally:
        os._exit(0)


class _Reader:
    """One thread reading what the tee hands back, for the sink."""

    def __init__(self, redirects: list[_Redirect], sink: Sink) -> None:
        self._redirects = redirects
        self._sink = sink
        self._thread = start_thread(self._run, "podfn-capture")

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for redirect in self._redirects:
                selector.register(redirect.back, selectors.EVENT_READ, redirect)
            open_pipes = len(self._redirects)
            while open_pipes:
                for key, _ in selector.select():
                    redirect = key.data
                    try:
                        data = os.read(redirect.back, _READ_SIZE)
                    except InterruptedError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        selector.unregister(redirect.back)
                        open_pipes -= 1
                        tail = redirect.decoder.decode(b"", final=True)
                        if tail:
                            self._sink.add(redirect.stream, tail)
                        continue
                    text = redirect.decoder.decode(data)
                    if text:
                        self._sink.add(redirect.stream, text.replace("\x00", "\ufffd"))

    def join(self) -> None:
        self._thread.join(_DRAIN_SECONDS)


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
    tee = os.fork()
    if tee == 0:
        _tee(redirects)
    reaper.spare(tee)
    for r in redirects:
        os.close(r.into_tee)
        os.close(r.back_write)
    reader = _Reader(redirects, sink)
    try:
        yield
    finally:
        _flush_python_streams()
        for redirect in redirects:
            redirect.restore()
        reader.join()  # the tee ends when the last writer (we killed the rest) is gone
        _reap(tee)
        for redirect in redirects:
            with contextlib.suppress(OSError):
                os.close(redirect.back)
            os.close(redirect.original)
        for stream in reconfigured:
            with contextlib.suppress(Exception):
                getattr(stream, "reconfigure")(line_buffering=False)  # noqa: B009


def _reap(pid: int) -> None:
    deadline = time.monotonic() + _DRAIN_SECONDS
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
