"""Bulk cancel (API and CLI) and Ctrl-C at a `remote`/`map` call site."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import TEST_TOKEN, Platform, ThreadedServer, platform_settings
from podfn.cli import cli
from podfn.errors import NotAuthorized, PlatformError
from podfn.http import APIClient
from podfn.serialization import client_versions
from podfn_platform.api.app import create_app
from podfn_platform.database import Database

VERSIONS = client_versions()


def submit(client: APIClient, name: str, n: int) -> list[str]:
    return client.submit(function_name=name, function=b"fn", args=[b"a"] * n, spec={},
                         versions=VERSIONS)


def states(db: Database, ids: list[str]) -> list[str]:
    by_id = {r["id"]: r["state"] for r in db.all("call_states", {"ids": ids})}
    return [by_id[i] for i in ids]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture
def admin(api_only: str) -> APIClient:
    with APIClient(api_only, TEST_TOKEN) as client:
        yield client  # type: ignore[misc]


def test_bulk_cancel_by_ids_and_by_filters(admin: APIClient, db: Database) -> None:
    trains = submit(admin, "train", 3)
    evals = submit(admin, "evaluate", 2)
    answer = admin.cancel_many(ids=trains[:2])
    assert answer["count"] == 2 and sorted(answer["cancelled"]) == sorted(trains[:2])
    assert states(db, trains) == ["cancelled", "cancelled", "queued"]
    dry = admin.cancel_many(function="evaluate", dry_run=True)
    assert sorted(dry["matched"]) == sorted(evals) and dry["cancelled"] == []
    assert states(db, evals) == ["queued", "queued"]  # a dry run changes nothing
    assert admin.cancel_many(function="evaluate", state="queued")["count"] == 2
    assert states(db, evals) == ["cancelled", "cancelled"]
    again = admin.cancel_many(ids=trains)  # final states stay final; only the third is left
    assert again["cancelled"] == [trains[2]]


def test_bulk_cancel_respects_token_ownership(admin: APIClient, api_only: str,
                                              db: Database) -> None:
    theirs = submit(admin, "f", 2)
    secret = admin.create_token("ci", ["submit"])["token"]
    with APIClient(api_only, secret) as ci:
        mine = submit(ci, "f", 2)
        with pytest.raises(NotAuthorized, match="admin"):
            ci.cancel_many(ids=[theirs[0], mine[0]])
        assert states(db, theirs + mine) == ["queued"] * 4
        # A filter from a token without admin matches only that token's calls.
        assert sorted(ci.cancel_many(function="f")["cancelled"]) == sorted(mine)
    assert states(db, theirs) == ["queued", "queued"]
    assert sorted(admin.cancel_many(mine=True)["cancelled"]) == sorted(theirs)


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({}, 422, "needs at least one of ids, function, state, mine"),
    ({"state": "succeeded"}, 422, 'state: "succeeded" is not one of "queued", "launching"'),
    ({"ids": "abc"}, 422, 'ids: "abc" is not of types "null", "array"'),
    ({"function": 3}, 422, 'function: 3 is not of types "null", "string"'),
    ({"mine": "yes"}, 422, 'mine: "yes" is not of type "boolean"'),
    ({"bogus": 1}, 422, "bogus: is not a field this request takes"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_bulk_cancel_rejects_bad_bodies(api_only: str, body: Any, status: int,
                                        needle: str) -> None:
    import httpx
    response = httpx.post(f"{api_only}/v1/calls/cancel", json=body,
                          headers={"Authorization": f"Bearer {TEST_TOKEN}"})
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def test_cli_cancels_many_ids_and_filters_with_a_count_and_a_prompt(
        admin: APIClient, db: Database) -> None:
    ids = submit(admin, "train", 3)
    assert run("cancel").exit_code == 2  # nothing said: a usage error
    result = run("cancel", ids[0], ids[1], input="y\n")
    assert result.exit_code == 0, result.output
    assert "cancel 2 call(s)?" in result.output and "cancelled 2 call(s)" in result.output
    declined = run("cancel", "--function", "train", input="n\n")
    assert declined.exit_code == 1 and states(db, ids)[2] == "queued"
    as_json = run("cancel", "--function", "train", "--yes", "--output", "json")
    assert json.loads(as_json.output) == {"cancelled": [ids[2]], "count": 1}
    assert states(db, ids) == ["cancelled"] * 3
    nothing = run("cancel", "--all-mine", "--yes")
    assert nothing.exit_code == 0 and "nothing to cancel" in nothing.output
    single = run("cancel", ids[0], "--output", "json")
    assert json.loads(single.output)["state"] == "cancelled"


CLIENT_SCRIPT = """
import sys, time
from podfn import remote

@remote
def sleepy(i):
    time.sleep(120)
    return i

if sys.argv[1] == "map":
    print(list(sleepy.map(range(3))))
else:
    print(sleepy.remote(0))
"""


def start_client(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "client_app.py"
    script.write_text(CLIENT_SCRIPT)
    return subprocess.Popen([sys.executable, str(script), mode], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))


@pytest.mark.e2e
@pytest.mark.parametrize(("mode", "count"), [("map", 3), ("remote", 1)])
def test_ctrl_c_cancels_what_the_call_site_submitted(platform: Platform, tmp_path: Path,
                                                     mode: str, count: int) -> None:
    client = start_client(tmp_path, mode)
    try:
        def running() -> list[dict[str, Any]]:
            rows = platform.db.all("list_calls", {"state": "running", "function": None,
                                                  "limit": 10})
            return rows if len(rows) == count else []
        calls = wait_until(running, what=f"{count} running calls")
        client.send_signal(signal.SIGINT)
        _, stderr = client.communicate(timeout=30)
    finally:
        client.kill()
    assert client.returncode == -signal.SIGINT, stderr  # it still ends as a Ctrl-C does
    assert f"cancelled {count} call(s)" in stderr, stderr
    assert "Traceback" not in stderr and "httpx" not in stderr, stderr
    ids = [c["id"] for c in calls]
    assert states(platform.db, ids) == ["cancelled"] * count


def test_map_cancels_the_batches_it_submitted_when_a_later_one_fails(
        database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from podfn import function as function_module
    from podfn import remote

    @remote
    def echo(x: bytes) -> int:
        return len(x)

    # The client batches by the same limit the API enforces: two arguments per
    # request here; the fifth argument alone is larger than the API accepts.
    limit = 300_000
    app = create_app(platform_settings(database_url, max_request_bytes=limit), db=db)
    monkeypatch.setenv("PODFN_MAX_REQUEST_BYTES", str(limit))
    monkeypatch.setattr(function_module, "_REQUEST_SLACK", 0)
    args = [b"x" * 100_000] * 4 + [b"y" * 400_000]
    with ThreadedServer(app) as server, pytest.raises(PlatformError) as raised:
        monkeypatch.setenv("PODFN_URL", server.url)
        monkeypatch.setenv("PODFN_TOKEN", TEST_TOKEN)
        echo.map(args)
    app.extensions["podfn.waiter"].close()
    assert raised.value.status == 413
    assert "cancelled the 4 it had submitted" in "".join(raised.value.__notes__)
    rows = db.all("list_calls", {"state": None, "function": None, "limit": 10})
    assert len(rows) == 4 and {r["state"] for r in rows} == {"cancelled"}


def test_map_batches_by_count_and_by_bytes() -> None:
    from podfn.function import _PART_OVERHEAD, batches

    blobs = [b"x" * 1000] * 10
    by_count = list(batches(blobs, max_count=4, max_bytes=1 << 20))
    assert [len(b) for b in by_count] == [4, 4, 2]
    by_bytes = list(batches(blobs, max_count=100, max_bytes=3 * (1000 + _PART_OVERHEAD)))
    assert [len(b) for b in by_bytes] == [3, 3, 3, 1]
    assert [len(b) for b in batches([b"x" * 5000, b"y"], max_count=9, max_bytes=100)] == [1, 1]


SLOW_CANCEL_SCRIPT = """
import sys, threading
from podfn.interrupt import cancelling_on_interrupt

def cancel_many(ids):
    print("cancelling", flush=True)
    threading.Event().wait()  # a cancel request that never answers
    return 0

with cancelling_on_interrupt(cancel_many, ["a", "b"]):
    print("waiting", flush=True)
    threading.Event().wait()
"""


def test_a_second_ctrl_c_leaves_at_once(tmp_path: Path) -> None:
    script = tmp_path / "slow_cancel.py"
    script.write_text(SLOW_CANCEL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "cancelling"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "cancelling the 2 call(s)" in stderr and "leaving now" in stderr
    assert "Traceback" not in stderr, stderr
