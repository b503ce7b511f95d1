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
call), and one pair of pipes per stream serves every capture: made at the
first, their ends handed to the tee over a socket (SCM_RIGHTS), kept after.
During a call descriptors 1 and 2 point into the pipes; between calls they
point at their originals again, so nothing reaches the pipes. At the end of
a call the runtime sends the tee a fence on that socket: the tee copies on
what is in the pipes, then answers, and the runtime takes what the tee handed
back, so what one call wrote never mixes with the next one's. (Fresh pipes
per call, which the tee saw end, cost a warm worker ~0.15 ms of CPU per
call more.) A thread a call left running writes into the next call's
output while that call runs (docs/warm-workers.md says so); the reaper has
killed the call's processes before the fence. The
tee ends by itself once the runtime is gone (or said it is done,
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
import fcntl
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
# The end of a call, from the runtime to its tee, and the tee's answer (each with the
# call's sequence number), on the socket that hands the tee its pipes.
_FENCE = b"fence:"
_FENCED = b"fenced:"


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


def _identity(fd: int) -> tuple[int, int]:
    """Which open file `fd` is (device, inode): a pipe, a log file or a terminal."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _pipe_settings(fd: int) -> tuple[int, int]:
    """What a call could change of a pipe it writes to, for the calls after it: its
    status flags (O_NONBLOCK, O_ASYNC, O_DIRECT) and its size."""
    size = getattr(fcntl, "F_GETPIPE_SZ", None)  # (Linux's)
    return fcntl.fcntl(fd, fcntl.F_GETFL), -1 if size is None else fcntl.fcntl(fd, size)


class _Stream:
    """Descriptor `fd`'s capture, kept from one call to the next: `write_end` is the
    pipe into the tee that `fd` points at during a call, `original` where `fd` points
    otherwise, `back` the pipe on which the tee hands the same bytes to the runtime
    (non-blocking: the end of a capture takes what is in it)."""

    def __init__(self, fd: int, stream: str) -> None:
        self.fd = fd
        self.stream = stream
        self.original = os.dup(fd)
        self.into_tee, self.write_end = os.pipe()
        self.back, self.back_write = os.pipe()
        os.set_blocking(self.back, False)
        self.ended = False  # `back` has ended (the tee is gone): the reader closes it
        self.identities = (_identity(self.original), _identity(self.write_end))
        self.settings = _pipe_settings(self.write_end)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def intact(self) -> bool:
        """Whether `fd` still points where it did and the pipe is still ours, as it
        was made (a call that closed or repointed descriptors, or made the pipe
        non-blocking, say through a child process that left its stdout so: the next
        call would lose output; a forkserver child given its own log)."""
        try:
            return ((_identity(self.fd), _identity(self.write_end)) == self.identities
                    and _pipe_settings(self.write_end) == self.settings)
        except OSError:
            return False

    def close(self) -> None:
        """Our copies of the pipe into the tee and of the original (`back` is the
        reader thread's to close, once its selector has let go of it)."""
        for fd in (self.write_end, self.original):
            with contextlib.suppress(OSError):
                os.close(fd)


def _tee(control: socket.socket) -> None:
    """The tee process: `tee_loop`, then exit. Only os and socket calls: it was forked
    from a threaded process."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # echo to the end; EOF ends us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        tee_loop(control)
    finally:
        os._exit(0)


def _fence_sequence(message: bytes) -> bytes | None:
    return message[len(_FENCE):] if message.startswith(_FENCE) else None


def tee_loop(control: socket.socket) -> None:
    """For each capture the runtime hands over (per stream: the pipe from the call, the
    pipe back to the runtime, and the runtime's original descriptor) on `control`, copy
    the pipe to the original and back to the runtime until its writers are gone; return
    once the runtime closed `control` and every pipe has ended (closing `control`).
    A fence on `control` (the end of a call) is answered once everything already in
    the pipes has been copied, so the runtime knows where the call's output ends.
    Run by the runtime's own tee process, or by a thread of the local forkserver's
    supervisor (proxy.py), one per runtime."""
    targets: dict[int, int] = {}  # pipe from the call -> where it echoes
    backs: dict[int, int] = {}  # pipe from the call -> pipe back to the runtime

    def pump(fd: int) -> bool:
        """Copy one read of `fd` on; False at its end (then closed)."""
        try:
            data = os.read(fd, _READ_SIZE)
        except InterruptedError:
            return True
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(OSError):
                os.close(targets.pop(fd))
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError, KeyError):
                os.close(backs.pop(fd))
            return False
        _write_all(targets[fd], data)
        if fd in backs and not _write_all(backs[fd], data):
            with contextlib.suppress(OSError):
                os.close(backs.pop(fd))  # the runtime is gone: echo on regardless
        return True

    try:
        listening = True
        while targets or listening:
            poller = select.poll()  # not select(): a supervisor's descriptors pass 1024
            for fd in list(targets) + ([control.fileno()] if listening else []):
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll():
                if fd == control.fileno():
                    try:
                        message, fds, _, _ = socket.recv_fds(control, 32, 8)
                    except InterruptedError:
                        continue
                    except OSError:
                        message, fds = b"", []
                    sequence = None if fds else _fence_sequence(message)
                    if sequence is not None:
                        # Everything written before the fence is in the pipes now: copy
                        # it on, then answer (the runtime takes what is in its pipes back).
                        for pipe in list(targets):
                            ready = select.poll()
                            ready.register(pipe, select.POLLIN)
                            while pipe in targets and ready.poll(0) and pump(pipe):
                                pass
                        with contextlib.suppress(OSError):
                            control.send(_FENCED + sequence)
                        continue
                    n = len(message)
                    if not message or len(fds) != 3 * n:
                        for extra in fds:
                            with contextlib.suppress(OSError):
                                os.close(extra)
                        listening = False
                        continue
                    for i in range(n):
                        targets[fds[i]] = fds[2 * n + i]
                        backs[fds[i]] = fds[n + i]
                    continue
                if fd in targets:
                    pump(fd)
    finally:
        for fd in [*targets, *targets.values(), *backs.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        control.close()


class _TeeProcess:
    """The tee, forked at the first capture and kept for every later one (a warm
    worker runs many calls): a fork and a reap per call cost more than the call."""

    fences = 0  # fences sent on `control` so far: each answer names its fence

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

    def hand(self, streams: list[_Stream]) -> None:
        """Give the tee these pipes (it holds the only copies of their tee-side ends
        afterwards) and a copy of each descriptor they stand in for."""
        socket.send_fds(self.control, [bytes(s.fd for s in streams)],
                        [s.into_tee for s in streams] + [s.back_write for s in streams]
                        + [s.original for s in streams])

    def fence(self, seconds: float) -> bool:
        """Ask the tee to copy on what is in the pipes now; whether it answered within
        `seconds` (not: it is gone, or stuck writing to a log nobody reads). The
        numbers never repeat on the socket, so the late answer to a fence that timed
        out (the tee outlives the channel that gave up on it) is never taken for a
        later one's."""
        self.fences += 1
        tag = str(self.fences).encode()
        try:
            self.control.send(_FENCE + tag)
        except OSError:
            return False
        deadline = time.monotonic() + seconds
        answer = select.poll()
        answer.register(self.control, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not answer.poll(left * 1000):
                return False
            try:
                message = self.control.recv(64)
            except InterruptedError:
                continue
            except OSError:
                return False
            if not message:
                return False  # the tee is gone
            if message == _FENCED + tag:
                return True
            # (an answer to an earlier fence that timed out: not ours)

    def alive(self) -> bool:
        """Whether the tee still holds its end of the socket (not killed by someone)."""
        hung_up = select.poll()
        hung_up.register(self.control, select.POLLHUP | select.POLLERR)
        try:
            return not any(events & (select.POLLHUP | select.POLLERR)
                           for _, events in hung_up.poll(0))
        except OSError:
            return False

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


def _handed_to_tee(streams: list[_Stream]) -> _TeeProcess:
    global _tee_process
    if _tee_process is not None:
        try:
            _tee_process.hand(streams)
            return _tee_process
        except OSError:  # the tee is gone (killed by someone): start another
            with contextlib.suppress(OSError):
                _tee_process.close()
    _tee_process = None
    tee = _TeeProcess()
    tee.hand(streams)
    _tee_process = tee
    return tee


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
    _retire_channel()  # our ends of its pipes closed: the tee sees them end
    tee, _tee_process = _tee_process, None
    if tee is not None:
        tee.close()


class _Channel:
    """This runtime's captures: one pipe per stream into the tee and one back, made at
    the first capture and kept for every later one (a warm worker captures once per
    call; fresh pipes handed over each time cost more than a trivial call). Between
    calls the descriptors point at their originals again, so nothing reaches the
    pipes; at the end of a call a fence through the tee marks where its output ends.
    The reader thread and the end of a capture both take what comes back, under
    `lock`, for the sink of the call running now."""

    def __init__(self, reader: _Reader) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.sink: Sink | None = None
        self.reader = reader
        self.streams = [_Stream(1, "stdout"), _Stream(2, "stderr")]
        try:
            self.tee = _handed_to_tee(self.streams)
        except BaseException:
            for s in self.streams:
                s.close()
                os.close(s.back)
            raise
        finally:
            for s in self.streams:  # the tee has its own copies now
                os.close(s.into_tee)
                os.close(s.back_write)
        reader.add(self)

    def usable(self) -> bool:
        return (self.pid == os.getpid() and self.tee is _tee_process and self.tee.alive()
                and all(s.intact() for s in self.streams))

    def begin(self, sink: Sink) -> None:
        with self.lock:
            for s in self.streams:  # what came between calls (a stray writer) is dropped
                s.decoder.decode(b"", final=True)
            self.sink = sink
        for s in self.streams:
            os.dup2(s.write_end, s.fd)

    def end(self) -> bool:
        """Point the descriptors back, fence, and hand the sink what is left; whether
        all went well (if not, the channel is not used again)."""
        restored = True
        for s in self.streams:
            try:
                os.dup2(s.original, s.fd)
            except OSError:  # the call closed our copy of the original
                restored = False
        fenced = self.tee.fence(_DRAIN_SECONDS)
        with self.lock:
            for s in self.streams:
                self.take(s)
                tail = s.decoder.decode(b"", final=True)
                if tail and self.sink is not None:
                    self.sink.add(s.stream, tail)  # (and the decoder starts afresh)
            self.sink = None
        return fenced and restored

    def take(self, stream: _Stream) -> None:
        """Under `lock`: everything in `stream`'s pipe back, to the sink."""
        while not stream.ended:
            try:
                data = os.read(stream.back, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                stream.ended = True
                self.reader.drop(self)
                return
            text = stream.decoder.decode(data)
            if text and self.sink is not None:
                self.sink.add(stream.stream, text.replace("\x00", "\ufffd"))
            if len(data) < _READ_SIZE:
                return

    def close(self) -> None:
        for s in self.streams:
            s.close()
        self.reader.drop(self)


class _Reader:
    """One thread, kept for the runtime's life, reading what the tee hands back for
    every capture (a warm worker captures once per call: a thread started and joined
    per call cost more than a trivial call). A channel's pipes are added and dropped
    through a wake-up pipe."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._wake_read, self._wake_write = os.pipe()
        self._lock = threading.Lock()
        self._added: list[_Channel] = []
        self._dropped: list[_Channel] = []
        # Not threading.Thread: its start() waits until the new thread runs, and on a
        # busy machine the scheduler takes its time (up to a millisecond and more of a
        # cold call's latency); nothing here needs to wait for that.
        with _small_stack():
            _thread.start_new_thread(self._run, ())

    def add(self, channel: _Channel) -> None:
        with self._lock:
            self._added.append(channel)
        os.write(self._wake_write, b"+")

    def drop(self, channel: _Channel) -> None:
        """Stop reading `channel` and close its pipes back."""
        with self._lock:
            self._dropped.append(channel)
        os.write(self._wake_write, b"-")

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_read, selectors.EVENT_READ, None)
            while True:
                for key, _ in selector.select():
                    if key.data is None:
                        self._changes(selector)
                    else:
                        channel, stream = key.data
                        with channel.lock:
                            channel.take(stream)

    def _changes(self, selector: selectors.BaseSelector) -> None:
        with contextlib.suppress(InterruptedError, BlockingIOError):
            os.read(self._wake_read, 4096)
        with self._lock:
            added, self._added = self._added, []
            dropped, self._dropped = self._dropped, []
        for channel in added:
            for stream in channel.streams:
                if stream.back >= 0:
                    selector.register(stream.back, selectors.EVENT_READ, (channel, stream))
        for channel in dropped:
            # Only this thread closes a pipe back, after its selector let go of it: a
            # number closed elsewhere could come back as another pipe, still mapped.
            with channel.lock:
                for stream in channel.streams:
                    if stream.back >= 0:
                        with contextlib.suppress(KeyError, ValueError):
                            selector.unregister(stream.back)
                        with contextlib.suppress(OSError):
                            os.close(stream.back)
                        stream.back, stream.ended = -1, True


_reader: _Reader | None = None
_channel: _Channel | None = None


def _the_reader() -> _Reader:
    """The reader thread (a new one in a forked child: threads do not survive a fork)."""
    global _reader
    if _reader is None or _reader.pid != os.getpid():
        _reader = _Reader()
    return _reader


def _the_channel() -> _Channel:
    """The channel of this runtime's captures, made anew when the last one cannot serve
    (its descriptors changed, its tee was replaced, a forked child)."""
    global _channel
    if _channel is not None and not _channel.usable():
        _retire_channel()
    if _channel is None:
        _channel = _Channel(_the_reader())
    return _channel


def _retire_channel() -> None:
    global _channel
    channel, _channel = _channel, None
    if channel is not None and channel.pid == os.getpid():
        channel.close()


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
    channel = _the_channel()
    channel.begin(sink)
    try:
        yield
    finally:
        _flush_python_streams()
        if not channel.end():
            _retire_channel()  # the next capture gets fresh pipes (and tee, if need be)
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
