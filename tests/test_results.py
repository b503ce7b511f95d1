"""Results: a size limit checked by the runtime, states from `wait`, payloads streamed apart."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from conftest import TEST_TOKEN, Platform, platform_settings, running_platform
from podfn import remote
from podfn.errors import CallFailed
from podfn_platform.controller.local import LocalLauncher
from podfn_platform.database import Database

pytestmark = pytest.mark.e2e

LIMIT = 4 * 1024 * 1024


@pytest.fixture
def limited(database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """The embedded platform with PODFN_MAX_RESULT_BYTES = 4 MiB."""
    wake = threading.Event()
    launcher = LocalLauncher(database_url, on_exit=wake.set, max_result_bytes=LIMIT)
    with running_platform(platform_settings(database_url, max_result_bytes=LIMIT), db, launcher,
                          wake, monkeypatch) as running:
        yield running


@remote
def blob(n: int) -> bytes:
    return b"x" * n


@remote
def explode(n: int) -> None:
    raise ValueError(f"no {n}")


def test_a_result_over_the_limit_fails_the_call_with_a_clear_reason(limited: Platform) -> None:
    call = blob.spawn(LIMIT + 1)
    with pytest.raises(CallFailed) as info:
        call.result(timeout=60)
    reason = str(info.value.reason)
    assert "more than the platform's limit of 4194304 bytes" in reason
    assert "PODFN_MAX_RESULT_BYTES" in reason
    assert call.info()["user_failures"] == 0  # not retried: it would only fail again


def test_large_results_are_streamed_and_small_ones_come_with_wait(limited: Platform) -> None:
    big = LIMIT - 1024
    assert blob.remote(big) == b"x" * big
    assert list(blob.map([1, 10, 100])) == [b"x", b"x" * 10, b"x" * 100]
    [small, large] = [blob.spawn(10), blob.spawn(big)]
    for call in (small, large):
        call.result(timeout=60)
    with httpx.Client(base_url=limited.url,
                      headers={"Authorization": f"Bearer {TEST_TOKEN}"}) as http:
        waited = http.post("/v1/calls/wait", json={"ids": [small.id, large.id], "wait": 0})
        by_id = {c["id"]: c for c in waited.json()["calls"]}
        assert "result" in by_id[small.id] and "result" not in by_id[large.id]
        assert by_id[large.id]["result_size"] > big and by_id[large.id]["result_format"] == "pickle"
        with http.stream("GET", f"/v1/calls/{large.id}/result") as response:
            assert response.headers["content-type"] == "application/octet-stream"
            assert int(response.headers["content-length"]) == by_id[large.id]["result_size"]
            pieces = [len(p) for p in response.iter_raw()]
        assert sum(pieces) == by_id[large.id]["result_size"]


def test_a_raised_exception_is_fetched_from_its_own_endpoint(limited: Platform) -> None:
    call = explode.spawn(3)
    with pytest.raises(ValueError, match="no 3"):
        call.result(timeout=60)
    with httpx.Client(base_url=limited.url,
                      headers={"Authorization": f"Bearer {TEST_TOKEN}"}) as http:
        assert http.get(f"/v1/calls/{call.id}/error").headers["content-type"] == \
            "application/octet-stream"
        missing = http.get(f"/v1/calls/{blob.spawn(1).id}/error")
        assert missing.status_code == 404
