"""A warm worker's call in a process of its own, forked from the warmed worker (`fork_per_call`).

Why: a warm worker is fast because it keeps what its first call paid for (the
interpreter, the imports, the unpickled function), and for the same reason
what one call changes is there for the next: module globals, the function's
own state, threads it left running, memory it leaked, os.environ
(docs/warm-workers.md). With the `fork_per_call` hint each call runs in a
child forked from the worker once the function is loaded: the child starts
with everything the worker warmed, and what the call changes in memory ends
with it. Files it writes, and anything outside the process, stay.

The child talks only to its parent, over one pipe: the items of a generator,
then the outcome, each a frame (a kind byte, a length, the bytes). It never
touches the worker's database connection (a forked child must not write on its
parent's libpq socket); the worker stores what it reads, as the call's output
goes through the descriptors the worker's capture set up before the fork. The
outcome is plain data (a dict of str, bytes, bool and None), decoded with an
unpickler that refuses every class: a call that writes its own bytes on the
pipe can at most fail itself.

A child that ends without an outcome (os._exit, a signal, a crash in C) fails
its call with its exit status as the reason, as a cold attempt's process would;
the worker goes on to its next call. The worker is its children's subreaper
(termination.py), so what a call started is still killed when the call ends.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import select
import signal
import struct
import sys
import warnings
from collections.abc import Callable
from typing import Any

from podfn_runtime import items
from podfn_runtime.main import Failure, Result, execute

_ITEM = b"i"
_OUTCOME = b"o"
_HEADER = struct.Struct(">cQ")
_INDEX = struct.Struct(">Q")
_EXIT_NO_OUTCOME = 70  # EX_SOFTWARE: the child's own machinery failed
# How often the worker looks whether a child that sent nothing yet has ended: a
# process the call forked may hold the pipe open after the child is gone.
_POLL_MS = 50


def wanted(spec: dict[str, Any]) -> bool:
    """Whether a warm worker runs this pool's calls each in a forked child."""
    return spec.get("fork_per_call") is True


class _Garbled(Exception):
    """The child's pipe held something other than our frames (the call wrote on it)."""


class _PlainData(pickle.Unpickler):
    """Unpickles dicts, str, bytes, numbers, bool and None; refuses every class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _encode(outcome: Result | Failure) -> bytes:
    fields = dict(vars(outcome), kind="result" if isinstance(outcome, Result) else "failure")
    return pickle.dumps(fields, protocol=5)


def _decode(data: bytes) -> Result | Failure:
    fields = _PlainData(io.BytesIO(data)).load()
    if not isinstance(fields, dict):
        raise ValueError("the outcome is not a dict")
    kind = fields.pop("kind", None)
    if kind == "result":
        return Result(pickled=_typed(fields, "pickled", bytes), json=_typed(fields, "json", str))
    if kind == "failure":
        return Failure(reason=str(fields["reason"]), retryable=bool(fields["retryable"]),
                       error_type=str(fields["error_type"]),
                       error_message=str(fields["error_message"]),
                       error_traceback=str(fields["error_traceback"]),
                       error_pickle=_typed(fields, "error_pickle", bytes))
    raise ValueError(f"unknown outcome kind {kind!r}")


def _typed(fields: dict[str, Any], name: str, kind: type) -> Any:
    value = fields.get(name)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{name} is {type(value).__name__}, not {kind.__name__}")
    return value


def _send(fd: int, kind: bytes, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(kind, len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _child(read_fd: int, write_fd: int, function: bytes, args: bytes, spec: dict[str, Any],
           result_format: str, item_limit: int, load: Callable[[bytes], Any]) -> None:
    """In the forked child: run the call, send its items and outcome, exit. Never returns."""
    code = _EXIT_NO_OUTCOME
    try:
        os.close(read_fd)
        # The worker's SIGTERM handler writes through the worker's connection: not here.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

        def on_item(index: int, item: Any) -> None:
            _send(write_fd, _ITEM, _INDEX.pack(index) + items.pickled(index, item, item_limit))

        outcome = execute(function, args, spec, result_format, on_item, load)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _send(write_fd, _OUTCOME, _encode(outcome))
        code = 0
    finally:
        os._exit(code)  # (whatever was raised: the exit code says it)


def _ended(status: int) -> Failure:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        how = f"exited with code {code}"
    else:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    reason = f"the call's process (fork_per_call) {how} before returning a result"
    return Failure(reason=reason, retryable=True, error_type="podfn.ProcessExited",
                   error_message=reason, error_traceback="", error_pickle=None)


class _Frames:
    """Frames read from the child's pipe as they arrive."""

    def __init__(self, fd: int, writer: items.ItemWriter) -> None:
        self.fd = fd
        self.writer = writer
        self.buffer = bytearray()
        self.outcome: Result | Failure | None = None

    def read(self) -> bool:
        """Take what the pipe holds now; False at its end."""
        try:
            chunk = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.buffer += chunk
        while len(self.buffer) >= _HEADER.size and self.outcome is None:
            kind, length = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < _HEADER.size + length:
                break
            payload = bytes(self.buffer[_HEADER.size:_HEADER.size + length])
            del self.buffer[:_HEADER.size + length]
            if kind == _ITEM and length >= _INDEX.size:
                (index,) = _INDEX.unpack_from(payload)
                self.writer.store(index, payload[_INDEX.size:])  # (its errors are ours)
            elif kind == _OUTCOME:
                try:
                    self.outcome = _decode(payload)
                except Exception as exc:
                    raise _Garbled(f"its outcome could not be read ({exc})") from None
            else:
                raise _Garbled(f"a frame of unknown kind {kind!r}")
        return True


def execute_forked(function: bytes, args: bytes, spec: dict[str, Any], result_format: str,
                   writer: items.ItemWriter, load: Callable[[bytes], Any]) -> Result | Failure:
    """`main.execute`, in a child forked for this call; the worker stores its items."""
    with contextlib.suppress(Exception):
        load(function)  # once, here: every child then starts with it loaded
    for stream in (sys.stdout, sys.stderr):  # nothing of the worker's, written twice
        with contextlib.suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns of fork in a threaded process. The child runs only the
        # call: it uses nothing the worker's other threads hold (the connection, the
        # recorder, the output writer), and logging resets its locks after a fork.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        _child(read_fd, write_fd, function, args, spec, result_format, writer.limit, load)
    os.close(write_fd)
    frames = _Frames(read_fd, writer)
    status: int | None = None
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)
    try:
        os.set_blocking(read_fd, False)
        while frames.outcome is None:
            ready = poller.poll(_POLL_MS)
            if ready and not frames.read():
                break
            if not ready:
                done, status_now = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = status_now
                    for _ in range(64):  # (bounded: what it forked may write on)
                        if frames.outcome is not None or not poller.poll(0) \
                                or not frames.read():
                            break
                    break
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if status is None:
            os.waitpid(pid, 0)
        if not isinstance(exc, _Garbled):
            raise
        reason = (f"the call's process (fork_per_call) wrote on the pipe its outcome comes "
                  f"back through: {exc}")
        return Failure(reason=reason, retryable=False, error_type="podfn.ProcessGarbled",
                       error_message=reason, error_traceback="", error_pickle=None)
    finally:
        os.close(read_fd)
    if status is None:
        _, status = os.waitpid(pid, 0)  # (a child that sent its outcome exits at once)
    return frames.outcome if frames.outcome is not None else _ended(status)
