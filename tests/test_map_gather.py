"""How `map` gathers results: one client for the whole map (no platform needed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import podfn.function
from podfn import remote, serialization
from podfn.http import Submitted


def double(x: int) -> int:
    return 2 * x


class FinishedAtOnce:
    """A client whose calls are finished (x * 2) as soon as they are submitted."""

    def __init__(self) -> None:
        self.results: dict[str, bytes] = {}
        self.waits = 0
        self.lingers: set[float | None] = set()

    def submit_waiting(self, *, args: list[bytes], **_: Any) -> Submitted:
        ids = []
        for blob in args:
            (x,), _kwargs = serialization.loads(blob)
            call_id = f"c{len(self.results)}"
            self.results[call_id] = serialization.dumps(2 * x)
            ids.append(call_id)
        return Submitted(ids, [])

    def wait(self, ids: Sequence[str], wait: float, **options: Any) -> list[dict[str, Any]]:
        self.waits += 1
        self.lingers.add(options.get("linger"))
        return [{"id": i, "state": "succeeded", "result": self.results[i]} for i in ids[:7]]


def test_a_map_looks_up_its_client_once_per_request_not_once_per_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, lookups = FinishedAtOnce(), []

    def default_client() -> FinishedAtOnce:
        lookups.append(1)  # each lookup reads the settings from the environment
        return client

    monkeypatch.setattr(podfn.function, "default_client", default_client)
    fn = remote(double)
    assert list(fn.map(range(300))) == [2 * x for x in range(300)]
    assert client.waits == 43  # 7 results a wait
    assert client.lingers == {podfn.function.GATHER_LINGER}  # calls finishing one by one
    assert len(lookups) == 2 + 1, "one per submit batch (256 calls) and one for the gather"
