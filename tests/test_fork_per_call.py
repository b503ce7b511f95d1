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


def _garbles(i: int) -> int:
    """Write a frame header that promises an outcome, then bytes that are no pickle of
    plain data, on every pipe this process may write to."""
    import stat
    import struct

    evil = pickle.dumps(os.system)  # a class/function reference: refused when read
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, struct.pack(">cQ", b"o", len(evil)) + evil)
        except OSError:
            pass
    time.sleep(0.5)
    return i


garbles = remote(max_calls_per_worker=None, idle_timeout=10, fork_per_call=True)(_garbles)


@pytest.mark.e2e
def test_a_call_that_writes_on_its_pipe_fails_itself_only(platform: Platform) -> None:
    with pytest.raises(CallFailed) as info:
        garbles.remote(1)
    assert "fork_per_call" in (info.value.reason or "")
    assert forked.remote(5)[2] == 1  # the platform goes on


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
