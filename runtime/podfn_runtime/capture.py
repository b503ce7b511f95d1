"""Capture everything a call writes to file descriptors 1 and 2, still echoing it.

Teeing `sys.stdout` catches `print` and nothing else: `logging` handlers,
`os.write(1, ...)`, child processes and C code write to the descriptors.
So for the call's duration descriptors 1 and 2 are pipes; a reader thread
per pipe copies what arrives to the original descriptor (the pod's log, or
the local launcher's FIFO, keeps showing it) and hands it to an `Output`
(output.py), which keeps it for the database. The runtime's own log lines go
to a duplicate of the original stderr taken before the capture starts
(main.py), so they never mix with the user's output.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

# How long the end of the capture waits for what is still in a pipe; only a
# process that kept the descriptor open after the call (and survived the
# reaper) makes the reader wait this long.
_DRAIN_SECONDS = 2.0
_READ_SIZE = 64 * 1024


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


class _Pipe:
    """Descriptor `fd` redirected into a pipe whose reader echoes and records."""

    def __init__(self, fd: int, stream: str, sink: Sink) -> None:
        self.fd = fd
        self.stream = stream
        self._sink = sink
        self.original = os.dup(fd)
        read_end, write_end = os.pipe()
        self._read_end = read_end
        os.dup2(write_end, fd)
        os.close(write_end)
        self._thread = threading.Thread(target=self._read, name=f"podfn-capture-{stream}",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                data = os.read(self._read_end, _READ_SIZE)
            except InterruptedError:
                continue
            except OSError:
                break
            if not data:
                break
            _write_all(self.original, data)
            text = decoder.decode(data)
            if text:
                self._sink.add(self.stream, text.replace("\x00", "\ufffd"))
        tail = decoder.decode(b"", final=True)
        if tail:
            self._sink.add(self.stream, tail)

    def restore(self) -> None:
        """Point `fd` back at the original; what is left in the pipe is still read."""
        os.dup2(self.original, self.fd)  # closes our write end of the pipe
        self._thread.join(_DRAIN_SECONDS)
        with contextlib.suppress(OSError):
            os.close(self._read_end)
        self._thread.join(_DRAIN_SECONDS)
        os.close(self.original)


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
    pipes = [_Pipe(1, "stdout", sink), _Pipe(2, "stderr", sink)]
    try:
        yield
    finally:
        _flush_python_streams()
        for pipe in pipes:
            pipe.restore()
        for stream in reconfigured:
            with contextlib.suppress(Exception):
                stream.reconfigure(line_buffering=False)
