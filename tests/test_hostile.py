"""Hostile code inside a call, end to end: it can touch its own call and nothing else.

The functions in hostile.py run through the real runtime, on the embedded
default (local launcher) and on the Kubernetes stand-in, and try what
docs/security.md says they cannot do. Every attempt must be refused, and the
hostile call's own result must still be recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import hostile
from conftest import TEST_TOKEN, Platform
from podfn import Call
from test_kubernetes_e2e import cluster, kplatform, make_platform  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["local", "kubernetes"])
def where(request: pytest.FixtureRequest) -> Iterator[Platform]:
    """The same platform on the local launcher, then on the Kubernetes stand-in."""
    name = "platform" if request.param == "local" else "kplatform"
    yield request.getfixturevalue(name)


def running(call: Call, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while call.status() != "running":
        assert time.monotonic() < deadline, f"{call} never started"
        time.sleep(0.05)


def assert_all_refused(tried: dict[str, str]) -> None:
    allowed = {k: v for k, v in tried.items() if not v.startswith("refused")}
    assert not allowed, f"hostile code got through: {allowed}"


def test_a_call_cannot_touch_other_calls_or_the_platform(
        where: Platform, tmp_path: Path, database_url: str, postgres_url: str) -> None:
    release = tmp_path / "release"
    victim = hostile.wait_for.spawn(str(release))
    running(victim)
    tried = hostile.attack.remote(victim.id, [TEST_TOKEN, database_url, postgres_url])
    assert len(tried) > 30
    assert_all_refused(tried)
    assert all("permission denied" in tried[f"select {t}"] for t in hostile.TABLES)
    assert "InsufficientPrivilege" in tried["copy from program"]
    # The victim ran on untouched and recorded its own result.
    release.touch()
    assert victim.result(timeout=60) == "the victim's own result"
    assert victim.info()["attempt"] == 1


def test_a_cold_call_reaches_only_its_own_call_through_the_supervisor(
        platform: Platform, tmp_path: Path) -> None:
    """The local forkserver's supervisor runs a cold call's protocol statements
    (podfn_runtime/proxy.py): through its socket a call can do no more than with a
    connection of its own, and less (only its own call and attempt, only the
    protocol's statements, no warm worker's `next`)."""
    release = tmp_path / "release"
    victim = hostile.wait_for.spawn(str(release))
    running(victim)
    tried = hostile.attack_supervisor.remote(victim.id)
    assert len(tried) > 20
    assert_all_refused(tried)
    assert "not this process's call" in tried["claim another call"]
    assert "not forwarded" in tried["a warm worker's next"]
    release.touch()
    assert victim.result(timeout=60) == "the victim's own result"
    assert victim.info()["attempt"] == 1


def test_a_spent_secret_and_token_are_dead(where: Platform) -> None:
    leaked: dict[str, Any] = hostile.leak_credentials.remote()
    assert leaked["secret"] and leaked["token"].startswith("pfn_call_")
    assert_all_refused(hostile.replay.remote(leaked))
    # The call's API token died with its attempt.
    answer = httpx.get(f"{where.url}/v1/calls", timeout=10,
                       headers={"Authorization": f"Bearer {leaked['token']}"})
    assert answer.status_code == 401


def test_nested_calls_act_for_the_caller(where: Platform) -> None:
    call: Call = hostile.nested.spawn(4)
    assert call.result(timeout=60) == 50
    inner = [c for c in where.db.all("list_calls", {"state": None, "function": None,
                                                    "limit": 10})
             if c["id"] != call.id]
    assert len(inner) == 1
    owners = {r["id"]: r["owner"] for r in where.db.all("call_owners",
                                                        {"ids": [call.id, inner[0]["id"]]})}
    assert owners[inner[0]["id"]] == owners[call.id]  # the outer call's owner, not a new one



def test_a_calls_token_has_at_most_its_callers_scopes(platform: Platform) -> None:
    """Invoked by an `invoke`-only token, a function cannot submit code with its own token."""
    from podfn.http import APIClient

    hostile.try_submit.deploy()
    admin = APIClient(platform.url, platform.token)
    invoker = admin.create_token("invoker", ["invoke"])["token"]
    answer = httpx.post(f"{platform.url}/v1/functions/hostile-try-submit/invoke",
                        json={"args": []}, headers={"Authorization": f"Bearer {invoker}"},
                        timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"].startswith("refused: ")
    assert "lacks the submit scope" in answer.json()["value"]
    admin.close()
