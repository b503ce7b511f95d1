"""Errors that say what to do, and the shapes of `map`: starmap, kwargs, return_exceptions."""

from __future__ import annotations

import threading

import pytest

import podfn
from podfn import remote
from podfn.errors import CallFailed, RemoteTraceback, Unpicklable

LOCK = threading.Lock()


def locked_helper() -> int:
    with LOCK:
        return 1


@remote
def uses_a_lock_through_a_helper(x: int) -> int:
    return locked_helper() + x


@remote
def scale(x: int, y: int = 1, *, factor: int = 1) -> int:
    return (x + y) * factor


@remote
def picky(x: int) -> int:
    if x == 2:
        raise ValueError(f"no {x}")
    return x


@remote
def imports_something_missing() -> None:
    import podfn_no_such_module  # type: ignore[import-not-found]  # noqa: F401


@remote(memory="200Mi")
def hog() -> int:
    return len(bytearray(600 * 1024 * 1024))


@remote(gpu=1)
def wants_a_gpu() -> int:
    return 1


def test_an_unpicklable_global_is_named_with_the_path_to_it() -> None:
    with pytest.raises(Unpicklable) as info:
        uses_a_lock_through_a_helper.spawn(1)
    message = str(info.value)
    assert "uses_a_lock_through_a_helper -> locked_helper uses the global `LOCK`" in message
    assert "_thread.lock" in message and "inside the function" in message


def test_an_unpicklable_closure_variable_and_argument_are_named() -> None:
    sock = threading.Lock()

    @remote
    def closes_over() -> object:
        return sock

    with pytest.raises(Unpicklable, match="closure variable `sock`"):
        closes_over.spawn()
    with pytest.raises(Unpicklable, match=r"keyword argument `y` \(a _thread.lock\)"):
        scale.spawn(1, y=threading.Lock())  # type: ignore[arg-type]
    assert isinstance(Unpicklable("x"), TypeError)  # still what pickle errors were


@pytest.mark.e2e
def test_remote_exceptions_name_the_call_and_the_logs_command(platform: object) -> None:
    call = picky.spawn(2)
    with pytest.raises(ValueError, match="no 2") as info:
        call.result()
    assert f"podfn: raised in call {call.id}; see its output with: podfn logs {call.id}" in \
        info.value.__notes__
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and cause.call_id == call.id
    assert f"Remote traceback of call {call.id} (see its output with: podfn logs {call.id})" \
        in str(cause)


@pytest.mark.e2e
def test_starmap_kwargs_and_return_exceptions(platform: object) -> None:
    assert list(scale.map([1, 2], [10, 20], kwargs={"factor": 2})) == [22, 44]
    assert list(scale.starmap([(1,), (1, 2)], kwargs={"factor": 10})) == [20, 30]
    out = list(picky.starmap([(1,), (2,), (3,)], return_exceptions=True))
    assert out[0] == 1 and out[2] == 3 and isinstance(out[1], ValueError)
    with pytest.raises(ValueError, match="no 2"):
        list(picky.map([1, 2, 3]))


@pytest.mark.e2e
def test_a_module_missing_in_the_runtime_says_how_to_add_it(platform: object) -> None:
    with pytest.raises(ModuleNotFoundError) as info:
        imports_something_missing.remote()
    note = "\n".join(info.value.__notes__)
    assert "runtime image does not have 'podfn_no_such_module'" in note
    assert "`image` hint" in note and "pip install podfn_no_such_module" in note


@pytest.mark.e2e
def test_memory_error_says_the_limit(platform: object) -> None:
    with pytest.raises(MemoryError, match=r"memory limit 200Mi exceeded") as info:
        hog.remote()
    assert any("memory='200Mi'" in n and "`memory` hint" in n for n in info.value.__notes__)


@pytest.mark.e2e
def test_gpu_under_the_local_launcher_is_refused_clearly(platform: object) -> None:
    call = wants_a_gpu.spawn()
    with pytest.raises(CallFailed, match="gpu=1 cannot be honoured: the local launcher") as info:
        call.result()
    assert info.value.reason and "PODFN_LAUNCHER=kubernetes" in info.value.reason
    assert call.info()["attempt"] == 1  # failed at once: retrying cannot help
    assert podfn.Call.from_id(call.id).status() == "failed"
