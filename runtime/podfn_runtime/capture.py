"""Capture what a call prints while still echoing it, as a pod's log would.

Simplification: this tees Python's `sys.stdout`/`sys.stderr`; bytes written
straight to file descriptors 1 and 2 (by C extensions or child processes)
reach the process's log but are not stored with the call.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

# What one stream keeps at most; older output is dropped with a marker so a
# chatty function cannot fill the database.
MAX_CAPTURED_CHARS = 1 << 20


class _Tee(io.TextIOBase):
    def __init__(self, echo: TextIO) -> None:
        self._echo = echo
        self._chunks: list[str] = []
        self._size = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._echo.write(text)
        with self._lock:
            self._chunks.append(text)
            self._size += len(text)
            while self._size > MAX_CAPTURED_CHARS and len(self._chunks) > 1:
                dropped = self._chunks.pop(0)
                self._size -= len(dropped)
                self._dropped += len(dropped)
        return len(text)

    def flush(self) -> None:
        self._echo.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._echo, "encoding", "utf-8")

    def text(self) -> str:
        with self._lock:
            body = "".join(self._chunks)
            dropped = self._dropped
        if len(body) > MAX_CAPTURED_CHARS:
            dropped += len(body) - MAX_CAPTURED_CHARS
            body = body[-MAX_CAPTURED_CHARS:]
        if dropped:
            return f"[podfn: {dropped} earlier characters dropped]\n{body}"
        return body


class Captured:
    def __init__(self, stdout: _Tee, stderr: _Tee) -> None:
        self._stdout = stdout
        self._stderr = stderr

    @property
    def stdout(self) -> str:
        return self._stdout.text()

    @property
    def stderr(self) -> str:
        return self._stderr.text()


@contextmanager
def capture_output() -> Iterator[Captured]:
    """Tee sys.stdout and sys.stderr for the duration of the block."""
    saved = sys.stdout, sys.stderr
    out, err = _Tee(saved[0]), _Tee(saved[1])
    sys.stdout, sys.stderr = out, err
    try:
        yield Captured(out, err)
    finally:
        sys.stdout, sys.stderr = saved
        saved[0].flush()
        saved[1].flush()
