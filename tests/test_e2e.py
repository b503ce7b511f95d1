"""End to end: client -> API -> Postgres -> controller -> runtime process -> Postgres -> client."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time

import pytest

import podfn
import podfn.serialization
from podfn import remote
from podfn.errors import CallCancelled, CallFailed, CallTimeout, RemoteTraceback

pytestmark = pytest.mark.e2e


@remote(cpu="250m", memory="256Mi", timeout=60)
def add(a: int, b: int) -> int:
    return a + b


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Rejected(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"value {value} rejected")
        self.value = value


@remote
def move(p: Point, dx: int) -> Point:
    return Point(p.x + dx, p.y)


@remote
def reject(value: int) -> None:
    raise Rejected(value)


@remote
def shout(text: str) -> int:
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    return len(text)


@remote(timeout=1)
def sleepy() -> None:
    time.sleep(60)


@remote
def crash() -> None:
    os._exit(3)


@remote(memory="200Mi")
def hog() -> int:
    blob = bytearray(600 * 1024 * 1024)
    return len(blob)


def test_the_four_ways_to_call(platform: object) -> None:
    assert add.remote(2, 3) == 5
    call = add.spawn(4, 5)
    assert isinstance(call, podfn.Call)
    assert podfn.Call.from_id(call.id).result() == 9
    assert call.status() == "succeeded"
    assert list(add.map([1, 2, 3], [10, 20, 30])) == [11, 22, 33]


def test_runs_in_its_own_process(platform: object) -> None:
    pid = remote(os.getpid).remote()
    assert pid != os.getpid()


def test_closures_dataclasses_and_user_classes_travel_by_value(platform: object) -> None:
    offset = 7

    @remote
    def shifted(x: int) -> int:
        return x + offset

    assert shifted.remote(1) == 8
    assert move.remote(Point(1, 2), 3) == Point(4, 2)


def test_custom_exception_comes_back_with_remote_traceback(platform: object) -> None:
    with pytest.raises(Rejected) as info:
        reject.remote(42)
    assert info.value.value == 42
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in reject" in cause.traceback_text and "Rejected: value 42 rejected" in cause.traceback_text


def test_stdout_and_stderr_are_captured(platform: object) -> None:
    call = shout.spawn("hello")
    assert call.result() == 5
    logs = call.logs()
    assert logs.stdout == "out: hello\n"
    assert logs.stderr == "err: hello\n"


def test_timeout_stops_the_call(platform: object) -> None:
    started = time.monotonic()
    with pytest.raises(CallTimeout) as info:
        sleepy.remote()
    assert time.monotonic() - started < 30
    assert info.value.state == "timed_out"
    assert "timed out after 1 s" in (info.value.reason or "")


def test_cancel_stops_a_running_call(platform: object) -> None:
    call = remote(time.sleep).spawn(60)
    deadline = time.monotonic() + 20
    while call.status() != "running":  # waiting on a state we cannot be notified of here
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.05)
    assert call.cancel() == "cancelled"
    with pytest.raises(CallCancelled):
        call.result(timeout=10)
    assert call.cancel() == "cancelled"  # idempotent


def test_crash_fails_with_exit_code_and_output(platform: object) -> None:
    with pytest.raises(CallFailed) as info:
        crash.remote()
    assert "exited with code 3" in str(info.value)


def test_memory_hog_reports_the_limit(platform: object) -> None:
    with pytest.raises(MemoryError) as info:
        hog.remote()
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "bytearray" in info.value.__cause__.traceback_text


def test_memory_limit_reason_is_recorded(platform: object) -> None:
    call = hog.spawn()
    with pytest.raises(MemoryError):
        call.result()
    assert call.info()["reason"] == "memory limit 200Mi exceeded"


def test_twenty_megabyte_argument(platform: object) -> None:
    blob = os.urandom(20 * 1024 * 1024)
    assert remote(len).remote(blob) == len(blob)


def test_map_with_and_without_return_exceptions(platform: object) -> None:
    results = list(reject.map([1, 2], return_exceptions=True))
    assert [type(r) for r in results] == [Rejected, Rejected]
    assert [r.value for r in results] == [1, 2]
    with pytest.raises(Rejected):
        list(reject.map([1]))
    assert sorted(add.map(range(5), range(5), order_outputs=False)) == [0, 2, 4, 6, 8]


def test_retries_with_backoff_then_success(platform: object, tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "attempts")

    @remote(retries=3, retry_backoff=0.2)
    def flaky() -> int:
        with open(marker, "a") as fh:
            fh.write("x")
        with open(marker) as fh:
            count = len(fh.read())
        if count < 3:
            raise RuntimeError(f"attempt {count} fails")
        return count

    call = flaky.spawn()
    assert call.result() == 3
    info = call.info()
    assert info["attempt"] == 3 and info["user_failures"] == 2
    attempts = info["attempts"]
    assert [a["state"] for a in attempts] == ["retrying", "retrying", "succeeded"]


def test_retries_run_out(platform: object) -> None:
    call = reject.options(retries=1, retry_backoff=0.0).spawn(5)
    with pytest.raises(Rejected):
        call.result()
    assert call.info()["attempt"] == 2


def test_version_mismatch_fails_with_a_clear_reason(platform: object) -> None:
    call_id = add.client.submit(
        function_name="add", function=b"whatever", args=[b"whatever"], spec={},
        versions={"python": "2.7.18", "cloudpickle": "0.5.0"})[0]
    with pytest.raises(CallFailed) as info:
        podfn.Call.from_id(call_id).result()
    reason = info.value.reason or ""
    assert "Python 2.7.18 on the client" in reason and "cloudpickle 0.5.0" in reason


def test_concurrency_limit_queues_instead_of_failing(platform: object) -> None:
    platform.controller.settings = dataclasses.replace(  # type: ignore[attr-defined]
        platform.controller.settings, max_concurrency=1)  # type: ignore[attr-defined]
    ids = add.client.submit(function_name="add", function=podfn.serialization.dumps(add.fn),
                            args=[podfn.serialization.dumps(((i, 1), {})) for i in range(3)],
                            spec=add.hints, versions=podfn.serialization.client_versions())
    assert [podfn.Call.from_id(i).result() for i in ids] == [1, 2, 3]
    spans = sorted((a["launched_at"], a["finished_at"])
                   for i in ids for a in podfn.Call.from_id(i).info()["attempts"])
    for (_, finished), (launched, _) in itertools.pairwise(spans):
        assert launched >= finished, "two attempts ran at once despite max_concurrency=1"
