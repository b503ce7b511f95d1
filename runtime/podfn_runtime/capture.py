"""Capture everything a call writes to file descriptors 1 and 2, still echoing it.

Teeing `sys.stdout` catches `print` and nothing else: `logging` handlers,
`os.write(1, ...)`, child processes and C code write to the descriptors.
So for the call's duration descriptors 1 and 2 are pipes; a reader thread
(one for both pipes) copies what arrives to the original descriptor (the pod's log, or
the local launcher's FIFO, keeps showing it) and hands it to an `Output`
(output.py), which keeps it for the database. The runtime's own log lines go
to a duplicate of the original stderr taken before the capture starts
(main.py), so they never mix with the user's output.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

# How long the end of the capture waits for what is still in a pipe; only a
# process that kept the descriptor open after the call (and survived the
# reaper) makes the reader wait this long.
_DRAIN_SECONDS = 2.0
_READ_SIZE = 64 * 1024
_STACK_BYTES = 256 * 1024


class Sink(Protocol):
    def add(self, stream: str, text: str) -> None: ...


def _write_all(fd: int, data: bytes) -> None:
    """Echo to the original descriptor; a closed or full log must not stop the call."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return
        view = view[written:]


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
    """Descriptor `fd` pointed into a pipe; `original` is where it pointed before."""

    def __init__(self, fd: int, stream: str) -> None:
        self.fd = fd
        self.stream = stream
        self.original = os.dup(fd)
        self.read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def restore(self) -> None:
        os.dup2(self.original, self.fd)  # closes our write end of the pipe


class _Reader:
    """One thread reading both pipes: echoes to the original descriptors, records."""

    def __init__(self, redirects: list[_Redirect], sink: Sink) -> None:
        self._redirects = redirects
        self._sink = sink
        self._thread = start_thread(self._run, "podfn-capture")

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for redirect in self._redirects:
                selector.register(redirect.read_end, selectors.EVENT_READ, redirect)
            open_pipes = len(self._redirects)
            while open_pipes:
                for key, _ in selector.select():
                    redirect = key.data
                    try:
                        data = os.read(redirect.read_end, _READ_SIZE)
                    except InterruptedError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        selector.unregister(redirect.read_end)
                        open_pipes -= 1
                        tail = redirect.decoder.decode(b"", final=True)
                        if tail:
                            self._sink.add(redirect.stream, tail)
                        continue
                    _write_all(redirect.original, data)
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
    reader = _Reader(redirects, sink)
    try:
        yield
    finally:
        _flush_python_streams()
        for redirect in redirects:
            redirect.restore()
        reader.join()
        for redirect in redirects:
            with contextlib.suppress(OSError):
                os.close(redirect.read_end)
            os.close(redirect.original)
        for stream in reconfigured:
            with contextlib.suppress(Exception):
                getattr(stream, "reconfigure")(line_buffering=False)  # noqa: B009
