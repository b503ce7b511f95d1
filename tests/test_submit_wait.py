"""A submission that waits (`POST /v1/calls?wait=S`): `.remote(x)` as one request (issue 12).

And the single statement that records one call with its Idempotency-Key: a
duplicate, concurrent or later, still gets the calls the key made, never new ones.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo

import podfn
from attempts import UNARMED, Runtime
from conftest import TEST_TOKEN, ThreadedServer, platform_settings, wait_until
from podfn import frames, remote, transport
from podfn.function import Function
from podfn.http import APIClient
from podfn_platform.api.app import create_app
from podfn_platform.database import Database

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
FRAMED = {**AUTH, "Accept": f"{frames.MEDIA_TYPE}, application/json;q=0.5"}
META = json.dumps({"function_name": "f", "spec": {},
                   "client": {"python": "3.11.7", "cloudpickle": "3.1.2"}})


@pytest.fixture
def app(database_url: str, db: Database) -> Iterator[Any]:
    app = create_app(platform_settings(database_url), db=db)
    yield app
    app.extensions["podfn.waiter"].close()


def _post(client: FlaskClient, query: str = "", *, args: list[bytes] | None = None,
          headers: dict[str, str] | None = None) -> Any:
    data: dict[str, Any] = {"meta": META, "function": (io.BytesIO(b"fn"), "function"),
                            "args": [(io.BytesIO(a), f"a{i}") for i, a in enumerate(args or [b"a"])]}
    return client.post(f"/v1/calls{query}", data=data, headers=headers or AUTH,
                       content_type="multipart/form-data")


def _finish(db: Database, call_id: str, result: bytes = b"R") -> None:
    db.all("claim_queued", {"limit": 10, **UNARMED})
    runtime = Runtime(db, make_conninfo(db.url, user=os.environ["PODFN_RUNTIME_ROLE"]))
    runtime.claim(call_id, 1)
    runtime.succeed(call_id, 1, result)


def _finish_once_waited(app: Any, db: Database) -> threading.Thread:
    """Finish the call a submission waits for, once it waits (its id is in the waiter)."""
    waiting = app.extensions["podfn.waiter"]._waiting

    def run() -> None:
        [call_id] = wait_until(lambda: list(waiting), what="a submission waiting")
        wait_until(lambda: db.one("get_call", {"id": call_id}), what="its call recorded")
        _finish(db, call_id)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_waiting_submission_answers_the_outcome_as_frames(app: Any, db: Database) -> None:
    finisher = _finish_once_waited(app, db)
    response = _post(app.test_client(), "?wait=20", headers=FRAMED)
    finisher.join(10)
    assert response.status_code == 201 and response.mimetype == frames.MEDIA_TYPE
    body = frames.decode([response.data])
    head = frames.header(body)
    [made] = head["calls"]
    [done] = head["finished"]
    assert head["replayed"] is False and done["id"] == made["id"]
    assert done["state"] == "succeeded" and body[done["result_frame"]] == b"R"


def test_a_waiting_submission_answers_json_to_a_json_client(app: Any, db: Database) -> None:
    finisher = _finish_once_waited(app, db)
    response = _post(app.test_client(), "?wait=20")
    finisher.join(10)
    assert response.status_code == 201 and response.mimetype == "application/json"
    [done] = response.json["finished"]
    assert done["id"] == response.json["calls"][0]["id"]
    assert base64.b64decode(done["result"]) == b"R"


def test_a_submission_that_does_not_finish_in_time_answers_the_calls(app: Any) -> None:
    client = app.test_client()
    response = _post(client, "?wait=0.2", headers=FRAMED, args=[b"1", b"2"])
    assert response.status_code == 201
    head = frames.header(frames.decode([response.data]))
    assert head["finished"] == [] and len(head["calls"]) == 2
    assert app.extensions["podfn.waiter"]._waiting == {}  # nothing left armed
    # Without `wait`, the answer is what it always was.
    plain = _post(client)
    assert plain.status_code == 201 and set(plain.json) == {"calls", "replayed"}


def test_a_replayed_waiting_submission_answers_what_the_key_made(app: Any, db: Database) -> None:
    client = app.test_client()
    headers = {**FRAMED, "Idempotency-Key": "k-1"}
    first = frames.header(frames.decode([_post(client, "?wait=0", headers=headers).data]))
    [made] = first["calls"]
    _finish(db, made["id"], b"done")
    again = _post(client, "?wait=20", headers=headers)
    assert again.status_code == 200
    body = frames.decode([again.data])
    head = frames.header(body)
    assert head["replayed"] is True and head["calls"] == [made]
    assert body[head["finished"][0]["result_frame"]] == b"done"
    other = _post(client, "?wait=1", headers=headers, args=[b"other"])
    assert other.status_code == 409
    assert len(db.all("list_calls", {"state": None, "function": None, "limit": 10})) == 1


@pytest.mark.parametrize("count", [1, 3])
def test_concurrent_duplicates_make_the_calls_once(app: Any, db: Database, count: int) -> None:
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        def one(_: int) -> tuple[int, list[str]]:
            response = http.post("/v1/calls", data={"meta": META}, files=[
                ("function", ("f", b"fn")), *(("args", (f"a{i}", b"a")) for i in range(count))],
                headers={**AUTH, "Idempotency-Key": f"same-{count}"})
            return response.status_code, [c["id"] for c in response.json()["calls"]]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(16)))
    assert sorted(status for status, _ in answers) == [200] * 15 + [201]
    assert len({tuple(ids) for _, ids in answers}) == 1
    assert len(db.all("list_calls", {"state": None, "function": None, "limit": 100})) == count


def test_remote_is_one_request(platform: object, monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[str] = []
    client = APIClient(os.environ["PODFN_URL"], os.environ["PODFN_TOKEN"])
    client._http.event_hooks["request"].append(lambda r: requests.append(r.url.path))
    post = transport.Connections.post

    def counted(self: transport.Connections, path: str, **kwargs: Any) -> Any:
        requests.append(path)
        return post(self, path, **kwargs)

    monkeypatch.setattr(transport.Connections, "post", counted)

    def double(x: int) -> int:
        return 2 * x

    assert Function(double, {}, client=client).remote(21) == 42
    assert requests == ["/v1/calls"]
    client.close()


def test_ctrl_c_before_the_id_is_known_cancels_the_call(platform: object,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the one request waits: the call is found by its Idempotency-Key and
    cancelled, as when Ctrl-C comes during the result's wait."""
    @remote
    def sleepy() -> None:
        import time
        time.sleep(60)

    made: list[str] = []
    real = type(sleepy)._submit_waiting

    def interrupted(self: Any, blobs: list[bytes], prepared: Any, *, wait: float | None = None,
                    key: str | None = None) -> Any:
        submitted = real(self, blobs, prepared, key=key)  # made, not waited for
        if wait is None:
            return submitted
        made.extend(submitted.ids)
        raise KeyboardInterrupt

    monkeypatch.setattr(type(sleepy), "_submit_waiting", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        sleepy.remote()
    assert raised.value.podfn_cancelled == 1  # type: ignore[attr-defined]
    assert podfn.Call.from_id(made[0]).status() == "cancelled"
    assert "cancelled 1 call(s)" in capsys.readouterr().err
