"""`async def` functions run in the runtime's event loop; the asyncio client (`.aio`)."""

from __future__ import annotations

import asyncio
import time

import pytest

import podfn
from podfn import remote
from podfn.errors import RemoteTraceback

pytestmark = pytest.mark.e2e


@remote
async def double_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@remote
async def fails_later(x: int) -> int:
    await asyncio.sleep(0)
    raise LookupError(f"missing {x}")


@remote
def add(a: int, b: int) -> int:
    return a + b


@remote
def sleepy() -> None:
    time.sleep(120)


def test_an_async_def_runs_to_its_end_remotely(platform: object) -> None:
    assert double_later.remote(21) == 42
    assert list(double_later.map([1, 2])) == [2, 4]
    with pytest.raises(LookupError, match="missing 3") as info:
        fails_later.remote(3)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fails_later" in cause.traceback_text
    assert "asyncio" not in cause.traceback_text, "the runtime's event loop is not the user's"


def test_the_asyncio_client(platform: object) -> None:
    async def main() -> tuple[int, list[int], int]:
        one = await add.remote.aio(1, 2)
        many = await asyncio.gather(*(add.remote.aio(i, i) for i in range(3)))
        call = await double_later.spawn.aio(5)
        assert isinstance(call, podfn.Call)
        return one, list(many), await call.result.aio(timeout=60)

    assert asyncio.run(main()) == (3, [0, 2, 4], 10)


def test_a_remote_exception_through_aio(platform: object) -> None:
    with pytest.raises(LookupError, match="missing 7"):
        asyncio.run(fails_later.remote.aio(7))


def test_cancelling_the_awaiting_task_cancels_the_call(platform: object) -> None:
    async def main() -> str:
        task = asyncio.ensure_future(sleepy.remote.aio())
        while True:  # until the call exists and is running
            rows = podfn.call.default_client().list_calls(state="running")
            if rows:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return str(rows[0]["id"])

    call_id = asyncio.run(main())
    assert podfn.Call.from_id(call_id).status() == "cancelled"


def test_result_aio_gives_up_waiting_with_result_timeout(platform: object) -> None:
    call = sleepy.spawn()
    with pytest.raises(podfn.ResultTimeout):
        asyncio.run(call.result.aio(timeout=0.2))
    assert call.cancel() == "cancelled"
