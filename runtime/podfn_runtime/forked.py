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

Every frame is checked before the worker acts on it (items in order and within
the limit, an outcome no larger than one can be, nothing after it): what a
call writes on the pipe fails that call (podfn.ProcessGarbled) and nothing
else. A child that a signal or a non-zero exit ends without an outcome fails
its call with that as the reason (podfn.ProcessExited), as a cold attempt's
process would; the worker goes on to its next call. The worker is its
children's subreaper (termination.py), so what a call started is still killed
when the call ends.
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
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from podfn_runtime import items
from podfn_runtime.main import Failure, Result, execute, within_limit

_ITEM = b"i"
_OUTCOME = b"o"
_HEADER = struct.Struct(">cQ")
_INDEX = struct.Struct(">Q")
_EXIT_NO_OUTCOME = 70  # EX_SOFTWARE: the child's own machinery failed
# How often the worker looks whether the child has ended while the pipe is quiet
# (a process the call forked may hold the pipe open after the child is gone), and
# how long it takes what is in the pipe once the child is gone.
_POLL_MS = 50
_DRAIN_SECONDS = 0.5
# Room in an outcome frame beyond the result limit: an error's type, message and
# traceback as text.
_TEXT_SLACK = 16 << 20
_TEXT_EACH = 1 << 20  # characters of each text field (UTF-8: up to 4 MiB each)


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
           result_format: str, limit: int, load: Callable[[bytes], Any]) -> None:
    """In the forked child: run the call, send its items and outcome, exit. Never returns."""
    code = _EXIT_NO_OUTCOME
    try:
        os.close(read_fd)
        # The worker's SIGTERM handler writes through the worker's connection: not here.
        # (SIGTERM was blocked across the fork; one that came meanwhile ends us now.)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

        def on_item(index: int, item: Any) -> None:
            _send(write_fd, _ITEM, _INDEX.pack(index) + items.pickled(index, item, limit))

        outcome = _trimmed(within_limit(
            execute(function, args, spec, result_format, on_item, load), limit))
        # The streams the call printed through, as in a plain warm worker (the
        # runtime's are unbuffered; a buffered one the function's import installed
        # would lose its last lines to os._exit).
        for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__,
                                          sys.__stderr__) if s is not None}.values():
            with contextlib.suppress(Exception):
                stream.flush()
        _send(write_fd, _OUTCOME, _encode(outcome))
        code = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()  # to the call's captured stderr: why it has no outcome
    finally:
        os._exit(code)


def _trimmed(outcome: Result | Failure) -> Result | Failure:
    """A failure's text cut to what the outcome frame has room for (_TEXT_SLACK): an
    exception's message comes back up to three times (reason, message, traceback)."""
    if isinstance(outcome, Failure):
        for name in ("reason", "error_message", "error_traceback"):
            text = getattr(outcome, name)
            if len(text) > _TEXT_EACH:
                setattr(outcome, name, text[:_TEXT_EACH] + " [... cut: longer than "
                        f"{_TEXT_EACH} characters]")
    return outcome


def _ended(status: int, spec: dict[str, Any]) -> Failure:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        how = f"exited with code {code}"
    else:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
        if -code == signal.SIGKILL and spec.get("memory"):
            how += f" (what the kernel does past the memory limit, memory={spec['memory']!r})"
    return _failure(f"{how} before returning a result", "podfn.ProcessExited", retryable=True)


def _garbled(why: str) -> Failure:
    return _failure(f"{why}: the call wrote on, closed or replaced the pipe its outcome "
                    "comes back through", "podfn.ProcessGarbled", retryable=False)


def _failure(what: str, error_type: str, *, retryable: bool) -> Failure:
    reason = f"the call's process (fork_per_call) {what}"
    return Failure(reason=reason, retryable=retryable, error_type=error_type,
                   error_message=reason, error_traceback="", error_pickle=None)


class _Frames:
    """Frames read from the child's pipe as they arrive, each checked before it is acted
    on: items in order from 0 and within the limit, an outcome no larger than one can
    be, nothing after it. Anything else is the call's own doing (_Garbled)."""

    def __init__(self, fd: int, writer: items.ItemWriter) -> None:
        self.fd = fd
        self.writer = writer
        self.buffer = bytearray()
        self.outcome: Result | Failure | None = None
        self.next_index = 0
        # An outcome holds at most a result within the limit, or an error's pickle
        # within it and its text.
        self.max_outcome = writer.limit + _TEXT_SLACK

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
            if kind == _ITEM and not _INDEX.size <= length <= _INDEX.size + self.writer.limit:
                raise _Garbled(f"sent an item frame of {length} bytes")
            if kind == _OUTCOME and length > self.max_outcome:
                raise _Garbled(f"sent an outcome frame of {length} bytes")
            if kind not in (_ITEM, _OUTCOME):
                raise _Garbled(f"sent a frame of unknown kind {kind!r}")
            if len(self.buffer) < _HEADER.size + length:
                break
            payload = bytes(self.buffer[_HEADER.size:_HEADER.size + length])
            del self.buffer[:_HEADER.size + length]
            if kind == _ITEM:
                (index,) = _INDEX.unpack_from(payload)
                if index != self.next_index:
                    raise _Garbled(f"sent item {index} where item {self.next_index} was due")
                self.next_index += 1
                self.writer.store(index, payload[_INDEX.size:])  # (its errors are ours)
            else:
                try:
                    self.outcome = _decode(payload)
                except Exception as exc:
                    raise _Garbled(f"sent an outcome that could not be read ({exc})") from None
        if self.outcome is not None and self.buffer:
            raise _Garbled("sent more after its outcome")
        return True


def _kill(pid: int) -> int:
    """Kill the child (not reaped yet, so the pid is still its own) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status


def _exit_soon(pid: int) -> int | None:
    """The child's wait status once it exits, if it does within _DRAIN_SECONDS; else
    None, and it is killed (and reaped). Waited for on a pidfd where Linux has one
    (5.3+): the wait ends when the child does, not at the next look."""
    deadline = time.monotonic() + _DRAIN_SECONDS
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
    poller = select.poll()
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if pidfd is not None:
                poller.poll(left * 1000)
            else:
                time.sleep(min(left, 0.0005))
    finally:
        if pidfd is not None:
            os.close(pidfd)
    _kill(pid)
    return None


def execute_forked(function: bytes, args: bytes, spec: dict[str, Any], result_format: str,
                   writer: items.ItemWriter, load: Callable[[bytes], Any]) -> Result | Failure:
    """`main.execute`, in a child forked for this call; the worker stores its items. A
    fork that fails is the worker's fault, not the call's: it is raised."""
    with contextlib.suppress(Exception):
        load(function)  # once, here: every child then starts with it loaded
    for stream in (sys.stdout, sys.stderr):  # nothing of the worker's, written twice
        with contextlib.suppress(Exception):
            stream.flush()
    read_fd, write_fd = os.pipe()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork in a threaded process. The child runs only the
            # call: it uses nothing the worker's other threads hold (the connection, the
            # recorder, the output writer; the runtime's streams are unbuffered, so
            # without a lock), and logging resets its locks after a fork.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # (it unblocks SIGTERM once its handler is the default)
        _child(read_fd, write_fd, function, args, spec, result_format, writer.limit, load)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.close(write_fd)
    frames = _Frames(read_fd, writer)
    status: int | None = None
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)
    try:
        os.set_blocking(read_fd, False)
        gone_at: float | None = None
        while frames.outcome is None:
            # Once the child is reaped, everything it wrote is in the pipe: a poll
            # taken after that says whether anything is left (one taken before may
            # have missed its last write).
            ready = poller.poll(_POLL_MS if gone_at is None else 0)
            if ready and not frames.read():
                break  # the pipe's end: nothing holds it any more
            if gone_at is not None:
                # The child is gone: take what it left; what a process it started goes
                # on writing is taken for a moment at most.
                if not ready or time.monotonic() - gone_at > _DRAIN_SECONDS:
                    break
                continue
            done, status_now = os.waitpid(pid, os.WNOHANG)
            if done:
                status, gone_at = status_now, time.monotonic()
    except BaseException as exc:
        if status is None:
            status = _kill(pid)
        if not isinstance(exc, _Garbled):
            raise
        return _garbled(str(exc))
    finally:
        os.close(read_fd)
    if status is None:
        # It sent its outcome, or its end of the pipe closed: it has nothing more to
        # say. It exits at once, unless the call closed the pipe and goes on, or
        # stopped it: such a child is not waited for.
        status = _exit_soon(pid)
    if frames.outcome is not None:
        return frames.outcome
    if status is None:
        return _garbled("closed the pipe before sending its outcome")
    if os.waitstatus_to_exitcode(status) != 0:
        # A signal or an exit code (another thread's os._exit, a C library's exit()),
        # perhaps while it sent: not the call's writing.
        return _ended(status, spec)
    if frames.buffer:
        return _garbled("exited with code 0 in the middle of a frame")
    return _garbled("exited with code 0 without sending its outcome")
