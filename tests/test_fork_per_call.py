"""`fork_per_call` (runtime/podfn_runtime/forked.py): a warm worker runs each call in a
process forked from it, so what one call changes in memory is gone for the next.

End to end with the local launcher, and the pipe's decoding with hostile bytes.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from typing import Any

import pytest

from conftest import Platform
from podfn import remote
from podfn.errors import CallFailed

# What a call leaves behind in its worker's memory: the function's own globals (it
# is pickled by value and loaded once per worker) and a thread that goes on running.
_left: dict[str, int] = {"calls": 0}


def _leave_state(i: int) -> tuple[int, int, int, int]:
    _left["calls"] += 1
    before = threading.active_count()
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    return os.getpid(), os.getppid(), _left["calls"], before


forked = remote(max_calls_per_worker=None, idle_timeout=10, fork_per_call=True)(_leave_state)
shared = remote(max_calls_per_worker=None, idle_timeout=10)(_leave_state)


@pytest.mark.e2e
def test_each_call_starts_from_the_warmed_worker(platform: Platform) -> None:
    runs = [forked.remote(i) for i in range(4)]
    pids, parents, counts, threads = zip(*runs, strict=True)
    assert len(set(pids)) == 4, f"each call should run in a process of its own: {pids}"
    assert len(set(parents)) == 1, f"all forked from one warm worker: {parents}"
    assert set(parents).isdisjoint(pids)
    assert counts == (1, 1, 1, 1), "a call saw what an earlier call left in memory"
    assert threads == (1, 1, 1, 1), "a call saw an earlier call's thread"
    # The same function without the hint: the worker keeps what each call left.
    runs = [shared.remote(i) for i in range(3)]
    assert [r[2] for r in runs] == [1, 2, 3] and len({r[0] for r in runs}) == 1


def _dies_on_one(i: int) -> tuple[int, int]:
    if i == 1:
        print("going down", flush=True)
        os._exit(3)
    return os.getpid(), os.getppid()


dies = remote(max_calls_per_worker=None, idle_timeout=10, fork_per_call=True)(_dies_on_one)


@pytest.mark.e2e
def test_a_call_that_ends_its_process_fails_alone(platform: Platform) -> None:
    first = dies.remote(0)
    with pytest.raises(CallFailed) as info:
        dies.remote(1)
    assert "exited with code 3" in (info.value.reason or "")
    last = dies.remote(2)
    assert first[1] == last[1], "the worker should outlive the call that ended its process"
    assert first[0] != last[0]


def _talks(n: int) -> Any:
    print(f"hello from {n}")
    os.write(2, b"to fd 2\n")
    yield from range(n)


talks = remote(max_calls_per_worker=None, idle_timeout=10, fork_per_call=True)(_talks)


@pytest.mark.e2e
def test_a_forked_call_keeps_its_output_and_items(platform: Platform) -> None:
    assert list(talks.remote_gen(3)) == [0, 1, 2]
    call = talks.spawn(2)
    assert call.result() == 2  # a generator's result: how many items it yielded
    logs = call.logs()
    assert logs.stdout == "hello from 2\n" and logs.stderr == "to fd 2\n", logs


def _garbles(mode: str) -> int:
    """On every pipe this process may write to: an outcome frame whose bytes are no
    pickle of plain data ('outcome'), or an item frame with an index the database
    cannot take ('item'); 'none': nothing, and the worker's pid."""
    import stat
    import struct

    if mode == "none":
        return os.getppid()
    evil = pickle.dumps(os.system)  # a class/function reference: refused when read
    frame = (struct.pack(">cQ", b"o", len(evil)) + evil if mode == "outcome"
             else struct.pack(">cQ", b"i", 9) + struct.pack(">Q", 2**40) + b"z")
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, frame)
        except OSError:
            pass
    time.sleep(0.5)
    return 0


garbles = remote(max_calls_per_worker=None, idle_timeout=10, fork_per_call=True)(_garbles)


@pytest.mark.e2e
def test_a_call_that_writes_on_its_pipe_fails_itself_only(platform: Platform) -> None:
    worker = garbles.remote("none")
    for mode in ("outcome", "item"):
        with pytest.raises(CallFailed) as info:
            garbles.remote(mode)
        assert "fork_per_call" in (info.value.reason or ""), info.value.reason
    assert garbles.remote("none") == worker, "the worker should have lived on"


def test_the_outcome_decoder_takes_plain_data_only() -> None:
    from podfn_runtime import forked as forked_module
    from podfn_runtime.main import Failure, Result

    for outcome in (Result(pickled=b"\x80\x05K\x01."), Result(json="[1]"),
                    Failure("why", True, "builtins.ValueError", "bad", "tb", None)):
        assert forked_module._decode(forked_module._encode(outcome)) == outcome
    with pytest.raises(pickle.UnpicklingError):
        forked_module._decode(pickle.dumps({"kind": "result", "pickled": os.system}))
    with pytest.raises(ValueError):
        forked_module._decode(pickle.dumps({"kind": "result", "pickled": "not bytes"}))


# The pipe's reading, in this process (no database): what a hostile or broken call can
# send, and that the worker neither hangs, nor leaks, nor stores what it should not.

class _Items:
    """ItemWriter's part that forked.py uses."""

    limit = 1 << 20

    def __init__(self) -> None:
        self.stored: list[int] = []

    def store(self, index: int, data: bytes) -> None:
        self.stored.append(index)


def _pipe_fd() -> int:
    """In the forked child: the descriptor its outcome goes back through."""
    import sys

    frame = sys._getframe()
    while frame.f_code.co_name != "_child":
        assert frame.f_back is not None
        frame = frame.f_back
    fd: int = frame.f_locals["write_fd"]
    return fd


def _partial_frame() -> int:
    import struct
    os.write(_pipe_fd(), struct.pack(">cQ", b"i", 100) + b"abc")
    return 1


def _item_out_of_order() -> int:
    import struct
    os.write(_pipe_fd(), struct.pack(">cQ", b"i", 9) + struct.pack(">Q", 2**40) + b"z")
    return 1


def _huge_frame() -> int:
    import struct
    os.write(_pipe_fd(), struct.pack(">cQ", b"o", 2**60))
    return 1


def _leaves_a_writer_behind() -> int:
    """A grandchild goes on sending well-formed items after the call's process ended."""
    import struct
    fd = _pipe_fd()
    if os.fork() == 0:
        index = 0
        while True:
            try:
                os.write(fd, struct.pack(">cQ", b"i", 9) + struct.pack(">Q", index) + b"z")
            except OSError:
                os._exit(0)
            index += 1
            time.sleep(0.001)
    os._exit(3)


def _stops_after_its_outcome() -> str:
    import signal

    from podfn_runtime import forked as forked_module
    send = forked_module._send

    def then_stop(fd: int, kind: bytes, payload: bytes) -> None:
        send(fd, kind, payload)
        if kind == b"o":
            os.kill(os.getpid(), signal.SIGSTOP)

    forked_module._send = then_stop
    return "done"


def _quits_quietly() -> None:
    os._exit(0)


def _killed() -> None:
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def _run_forked(fn: Any, spec: dict[str, Any] | None = None) -> tuple[Any, _Items]:
    import cloudpickle

    from podfn_runtime import forked as forked_module
    from podfn_runtime import reaper

    writer = _Items()
    started = time.monotonic()
    try:
        outcome = forked_module.execute_forked(
            cloudpickle.dumps(fn), cloudpickle.dumps(((), {})), spec or {}, "pickle",
            writer, cloudpickle.loads)  # type: ignore[arg-type]
    finally:
        reaper.kill_descendants()
    assert time.monotonic() - started < 10, "the worker waited too long"
    return outcome, writer


@pytest.mark.parametrize("fn, words", [
    (_partial_frame, "in the middle of a frame"),
    (_item_out_of_order, "sent item 1099511627776 where item 0 was due"),
    (_huge_frame, "an outcome frame of 1152921504606846976 bytes"),
    (_quits_quietly, "exited with code 0 without sending its outcome"),
])
def test_what_a_call_writes_on_its_pipe_fails_that_call(fn: Any, words: str) -> None:
    outcome, writer = _run_forked(fn)
    assert outcome.error_type == "podfn.ProcessGarbled" and words in outcome.reason, outcome
    assert not outcome.retryable  # it would write the same again
    assert writer.stored == []


def test_a_writer_left_behind_does_not_hold_the_worker() -> None:
    outcome, writer = _run_forked(_leaves_a_writer_behind)
    assert outcome.error_type == "podfn.ProcessExited", outcome
    assert "exited with code 3" in outcome.reason
    assert writer.stored == list(range(len(writer.stored)))  # in order, then cut off


def test_a_child_that_lingers_after_its_outcome_is_not_waited_for() -> None:
    import cloudpickle

    outcome, _ = _run_forked(_stops_after_its_outcome)
    assert cloudpickle.loads(outcome.pickled) == "done"


def test_a_killed_call_names_its_signal_and_the_memory_limit() -> None:
    outcome, _ = _run_forked(_killed, {"memory": "256Mi"})
    assert outcome.error_type == "podfn.ProcessExited" and outcome.retryable
    assert "killed by SIGKILL" in outcome.reason and "memory='256Mi'" in outcome.reason


def test_a_fork_that_fails_is_raised_and_leaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudpickle

    from podfn_runtime import forked as forked_module

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(BlockingIOError):
        forked_module.execute_forked(cloudpickle.dumps(_killed), cloudpickle.dumps(((), {})),
                                     {}, "pickle", _Items(), cloudpickle.loads)  # type: ignore[arg-type]
    assert len(os.listdir("/proc/self/fd")) == before


def _outcome_after_a_moment() -> str:
    time.sleep(0.08)  # past the worker's first look at the pipe (50 ms)
    return "late"


def test_an_outcome_sent_just_before_the_exit_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child sends its outcome and exits between the worker's look at the pipe and
    its look at the child (a thread of the worker holding the GIL can widen that gap):
    the outcome is still read."""
    import cloudpickle

    real_waitpid = os.waitpid
    looks: list[int] = []

    def late_look(pid: int, options: int) -> tuple[int, int]:
        looks.append(options)
        if len(looks) == 1:
            time.sleep(0.2)  # the child sends and exits meanwhile
        return real_waitpid(pid, options)

    monkeypatch.setattr(os, "waitpid", late_look)
    outcome, _ = _run_forked(_outcome_after_a_moment)
    assert cloudpickle.loads(outcome.pickled) == "late", outcome


def _raises_a_long_message() -> None:
    raise ValueError("x" * (6 << 20))


def test_a_long_error_message_is_the_call_s_own_failure() -> None:
    outcome, _ = _run_forked(_raises_a_long_message)
    assert outcome.error_type == "builtins.ValueError" and outcome.retryable, outcome.reason[:200]
    assert len(outcome.reason) < 2 << 20 and outcome.reason.endswith("characters]")


def _closes_its_pipe() -> str:
    os.close(_pipe_fd())
    time.sleep(30)
    return "never sent"


def test_a_call_that_closes_its_pipe_is_not_taken_for_killed() -> None:
    outcome, _ = _run_forked(_closes_its_pipe, {"memory": "1Gi"})
    assert outcome.error_type == "podfn.ProcessGarbled", outcome
    assert "closed the pipe" in outcome.reason and not outcome.retryable


def _exits_mid_frame() -> None:
    import struct
    os.write(_pipe_fd(), struct.pack(">cQ", b"o", 1000) + b"abc")
    os._exit(1)  # as another thread's os._exit, or a C library's exit(), would


def test_an_exit_mid_frame_is_an_exit() -> None:
    outcome, _ = _run_forked(_exits_mid_frame)
    assert outcome.error_type == "podfn.ProcessExited" and outcome.retryable
    assert "exited with code 1" in outcome.reason


def _prints_through_a_buffered_stream() -> str:
    import sys
    held = getattr(sys, "_podfn_test_held")  # noqa: B009 - looked up when the call runs
    held.write("through a buffered stream\n")
    return "printed"


def test_what_a_call_printed_through_a_buffered_stream_is_not_lost(
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An import in the worker may install a buffered sys.stdout and keep a reference to
    it: what the call writes through it is flushed before the child exits."""
    import io
    import sys

    import cloudpickle

    buffered = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8")  # noqa: SIM115
    monkeypatch.setattr(sys, "stdout", buffered)
    monkeypatch.setattr(sys, "_podfn_test_held", buffered, raising=False)
    outcome, _ = _run_forked(_prints_through_a_buffered_stream)
    assert cloudpickle.loads(outcome.pickled) == "printed", outcome
    assert "through a buffered stream" in capfd.readouterr().out
