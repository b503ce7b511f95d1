"""The HTTP API against a real database: validation, limits, auth, waiting, never unpickling."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from psycopg.conninfo import make_conninfo

from attempts import UNARMED, Runtime
from conftest import TEST_TOKEN, Refuser, ThreadedServer, platform_settings
from podfn import frames
from podfn_platform.api.app import create_app
from podfn_platform.database import Database

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
CLIENT = {"python": "3.11.7", "cloudpickle": "3.1.2"}


@pytest.fixture
def app_and_client(database_url: str, db: Database) -> Iterator[tuple[Any, FlaskClient]]:
    app = create_app(platform_settings(database_url, max_request_bytes=1024 * 1024), db=db)
    yield app, app.test_client()
    app.extensions["podfn.waiter"].close()


@pytest.fixture
def client(app_and_client: tuple[Any, FlaskClient]) -> FlaskClient:
    return app_and_client[1]


def submit(client: FlaskClient, *, meta: Any = None, function: bytes | None = b"fn",
           args: list[bytes] | None = None, headers: dict[str, str] | None = None) -> Any:
    meta = meta if meta is not None else {"function_name": "f", "spec": {}, "client": CLIENT}
    data: dict[str, Any] = {"meta": meta if isinstance(meta, str) else json.dumps(meta)}
    if function is not None:
        data["function"] = (_file(function), "function")
    data["args"] = [(_file(a), f"a{i}") for i, a in enumerate(args or [b"args"])]
    return client.post("/v1/calls", data=data, headers=AUTH if headers is None else headers,
                       content_type="multipart/form-data")


def _file(data: bytes) -> Any:
    import io
    return io.BytesIO(data)


def test_submit_records_calls_and_get_describes_them(client: FlaskClient) -> None:
    response = submit(client, args=[b"1", b"2"])
    assert response.status_code == 201
    ids = [c["id"] for c in response.json["calls"]]
    assert len(ids) == 2
    call = client.get(f"/v1/calls/{ids[0]}", headers=AUTH).json
    assert call["state"] == "queued" and call["function"] == "f" and call["attempt"] == 0
    assert call["spec"]["retries"] == 0 and call["attempts"] == []
    listed = client.get("/v1/calls?state=queued&function=f", headers=AUTH).json["calls"]
    assert sorted(c["id"] for c in listed) == sorted(ids)
    assert client.get("/v1/calls?function=other", headers=AUTH).json["calls"] == []


@pytest.mark.parametrize(("meta", "status", "field"), [
    ({"function_name": "f", "spec": {"cpu": "2 cores"}, "client": CLIENT}, 422, "spec.cpu"),
    ({"function_name": "f", "spec": {"memory": "-1Gi"}, "client": CLIENT}, 422, "spec.memory"),
    ({"function_name": "f", "spec": {"retries": 3_000_000_000}, "client": CLIENT}, 422,
     "spec.retries"),
    ({"function_name": "f", "spec": {"memory": 512}, "client": CLIENT}, 422, "spec.memory"),
    ({"function_name": "f", "spec": {"bogus": 1}, "client": CLIENT}, 422, "spec.bogus"),
    ({"function_name": "", "spec": {}, "client": CLIENT}, 422, "meta.function_name"),
    ({"function_name": "f", "spec": {}}, 422, "meta.client"),
    ("{not json", 400, "meta"),
])
def test_bad_submissions_name_the_field_and_store_nothing(
        refuser: Refuser, meta: Any, status: int, field: str) -> None:
    response = submit(refuser.client, meta=meta)
    assert response.status_code == status
    assert response.json["error"]["field"] == field
    assert response.json["error"]["message"]
    assert refuser.db.all("list_calls", {"state": None, "function": None, "limit": 10}) == []


def test_missing_parts_are_400(client: FlaskClient) -> None:
    response = submit(client, function=None)
    assert response.status_code == 400 and response.json["error"]["field"] == "function"


def test_too_large_is_413_with_advice(app_and_client: tuple[Any, FlaskClient],
                                      db: Database) -> None:
    app, _ = app_and_client
    files = {"function": ("function", b"fn"), "args": ("args", b"x" * (2 * 1024 * 1024))}
    meta = json.dumps({"function_name": "f", "spec": {}, "client": CLIENT})
    with ThreadedServer(app) as server:
        response = httpx.post(f"{server.url}/v1/calls", data={"meta": meta}, files=files,
                              headers=AUTH)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "by reference" in response.json()["error"]["message"]
    assert db.all("list_calls", {"state": None, "function": None, "limit": 10}) == []


def test_too_large_chunked_body_is_413(app_and_client: tuple[Any, FlaskClient]) -> None:
    app, _ = app_and_client

    def body() -> Iterator[bytes]:
        for _ in range(64):
            yield b"y" * 65536

    with ThreadedServer(app) as server:
        response = httpx.post(f"{server.url}/v1/calls", content=body(),
                              headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def framed_body(meta: Any, parts: list[tuple[str, bytes]]) -> bytes:
    """A submission as the Python client sends it (api/forms.py): frames, no multipart."""
    head = {"meta": meta, "parts": [field for field, _ in parts]}
    return b"".join(frames.encode(head, [blob for _, blob in parts]))


FRAMED = {**AUTH, "Content-Type": frames.MEDIA_TYPE}
META = {"function_name": "f", "spec": {}, "client": CLIENT}


def test_a_framed_submission_stores_each_argument_as_sent(client: FlaskClient,
                                                          db: Database) -> None:
    args = [os.urandom(300_000), b"", b"\x00" * 5]
    body = framed_body(META, [("function", b"fn"), *(("args", a) for a in args)])
    response = client.post("/v1/calls", data=body, headers={**FRAMED, "Idempotency-Key": "k1"})
    assert response.status_code == 201, response.json
    ids = [c["id"] for c in response.json["calls"]]
    with db.transaction() as tx:
        stored = [tx._conn.execute("SELECT args, function_digest FROM podfn_calls WHERE id = %s",
                                   (i,)).fetchone() for i in ids]
    assert [bytes(r["args"]) for r in stored] == args
    assert {r["function_digest"] for r in stored} == {hashlib.sha256(b"fn").hexdigest()}
    again = client.post("/v1/calls", data=body, headers={**FRAMED, "Idempotency-Key": "k1"})
    assert again.status_code == 200 and [c["id"] for c in again.json["calls"]] == ids


def test_a_framed_payload_hashed_as_it_is_read_fingerprints_as_multipart_does(
        client: FlaskClient, db: Database) -> None:
    """The digests taken while the frames are read (forms._read_frame) are the payloads'
    own: the same request as multipart replays the framed one's calls, a one-byte
    change is a different request, and the function is stored under its sha256."""
    args = [os.urandom(300_000), b"b", os.urandom(70_000)]  # multipart: under 500 KB
    function = os.urandom(5000)
    body = framed_body(META, [("function", function), *(("args", a) for a in args)])
    first = client.post("/v1/calls", data=body, headers={**FRAMED, "Idempotency-Key": "k2"})
    assert first.status_code == 201, first.json
    ids = [c["id"] for c in first.json["calls"]]
    same = submit(client, meta=META, function=function, args=args,
                  headers={**AUTH, "Idempotency-Key": "k2"})
    assert same.status_code == 200 and [c["id"] for c in same.json["calls"]] == ids
    changed = [args[0][:-1] + bytes([args[0][-1] ^ 1]), *args[1:]]
    other = client.post("/v1/calls", headers={**FRAMED, "Idempotency-Key": "k2"},
                        data=framed_body(META, [("function", function),
                                                *(("args", a) for a in changed)]))
    assert other.status_code == 409 and other.json["error"]["code"] == "idempotency_key_reused"
    with db.transaction() as tx:
        row = tx._conn.execute("SELECT function_digest FROM podfn_calls WHERE id = %s",
                               (ids[0],)).fetchone()
    assert row["function_digest"] == hashlib.sha256(function).hexdigest()


def test_a_framed_batchs_function_is_stored_under_the_digest_taken_while_reading(
        client: FlaskClient, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not hashed a second time to be stored (submission.store_payload is given it)."""
    from podfn_platform import submission

    def refused(data: object) -> str:
        raise AssertionError("the function was hashed again")

    monkeypatch.setattr(submission, "digest", refused)
    function = os.urandom(5000)
    body = framed_body(META, [("function", function), ("args", b"a"), ("args", b"b")])
    created = client.post("/v1/calls", data=body, headers=FRAMED)
    assert created.status_code == 201, created.json
    with db.transaction() as tx:
        row = tx._conn.execute("SELECT data FROM podfn_payloads WHERE digest = %s",
                               (hashlib.sha256(function).hexdigest(),)).fetchone()
    assert row is not None and bytes(row["data"]) == function


def _prefix(n: int) -> bytes:
    return frames.prefix(n)


GOOD = framed_body(META, [("function", b"fn"), ("args", b"a")])


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"", 400, "body"),
    (b"\x00\x00", 400, "body"),
    (_prefix(5) + b"{nope", 400, "frame 0"),
    (_prefix(2) + b"[]", 400, "body"),
    (framed_body({"x": 1}, [])[:8] + b"", 400, "body"),
    (b"".join(frames.encode({"meta": META, "parts": ["function", "other"]}, [b"f", b"a"])), 400,
     "body"),
    (GOOD[:-1], 400, "body"),  # the last frame announces a byte the body does not have
    (GOOD + b"x", 400, "body"),  # bytes past the last frame
    (GOOD[:-1 - frames.PREFIX_BYTES], 400, "body"),  # a frame the header names is missing
    (_prefix(2**63) + b"{}", 400, "body"),  # a huge length prefix: no buffer made for it
    (framed_body(META, [("args", b"a")]), 400, "function"),
    (framed_body(META, [("function", b"f"), ("function", b"g"), ("args", b"a")]), 400,
     "function"),
    (framed_body(META, [("function", b"f")]), 400, "args"),
    (framed_body({**META, "spec": {"cpu": "2 cores"}}, [("function", b"f"), ("args", b"a")]),
     422, "spec.cpu"),
    (framed_body({"function_name": "f", "spec": {}}, [("function", b"f"), ("args", b"a")]),
     422, "meta.client"),
])
def test_bad_framed_submissions_are_refused_and_store_nothing(
        refuser: Refuser, body: bytes, status: int, field: str) -> None:
    response = refuser.client.post("/v1/calls", data=body, headers=FRAMED)
    assert response.status_code == status, response.json
    assert response.json["error"]["field"] == field
    assert refuser.db.all("list_calls", {"state": None, "function": None, "limit": 10}) == []


def test_a_framed_body_past_the_limit_is_413(app_and_client: tuple[Any, FlaskClient],
                                             db: Database) -> None:
    app, _ = app_and_client
    big = framed_body(META, [("function", b"fn"), ("args", b"x" * (2 * 1024 * 1024))])

    def pieces() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
        for at in range(0, len(big), 65536):
            yield big[at:at + 65536]

    def cut() -> Iterator[bytes]:  # chunked, and ends inside a frame
        yield GOOD[:-1]

    with ThreadedServer(app) as server:
        for content in (big, pieces()):
            response = httpx.post(f"{server.url}/v1/calls", content=content, headers=FRAMED)
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "request_too_large"
        response = httpx.post(f"{server.url}/v1/calls", content=cut(), headers=FRAMED)
        assert response.status_code == 400
        assert "ends inside frame 2" in response.json()["error"]["message"]
    assert db.all("list_calls", {"state": None, "function": None, "limit": 10}) == []


def test_auth_is_required(client: FlaskClient, db: Database) -> None:
    response = submit(client, headers={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert submit(client, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert db.all("list_calls", {"state": None, "function": None, "limit": 10}) == []
    assert client.get("/healthz").status_code == 200


def test_readyz_checks_the_database(client: FlaskClient) -> None:
    assert client.get("/readyz").json == {"ok": True, "database": "reachable"}


def test_unknown_call_is_404(client: FlaskClient) -> None:
    for path in ("/v1/calls/nope", "/v1/calls/nope/logs", "/v1/calls/nope/result?wait=1"):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 404, path
        assert response.json["error"]["code"] == "not_found"
    assert client.post("/v1/calls/nope/cancel", headers=AUTH).status_code == 404
    response = client.post("/v1/calls/wait", json={"ids": ["nope"], "wait": 1}, headers=AUTH)
    assert response.status_code == 404


def test_bad_wait_requests(client: FlaskClient) -> None:
    assert client.post("/v1/calls/wait", json={"ids": []}, headers=AUTH).status_code == 422
    assert client.get("/v1/calls/x/result?wait=soon", headers=AUTH).status_code == 400
    assert client.get("/v1/calls?state=done", headers=AUTH).status_code == 400
    assert client.get("/v1/calls?limit=0", headers=AUTH).status_code == 400


class WritesAFile:
    """Unpickling this writes a file: proof of whoever unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(self.path), "unpickled"))


def test_the_api_never_unpickles_what_a_client_sent(client: FlaskClient, tmp_path: Path,
                                                   db: Database) -> None:
    evidence = tmp_path / "evidence"
    bomb = pickle.dumps(WritesAFile(str(evidence)))
    response = submit(client, function=bomb, args=[bomb])
    assert response.status_code == 201
    call_id = response.json["calls"][0]["id"]
    client.get(f"/v1/calls/{call_id}", headers=AUTH)
    client.get("/v1/calls", headers=AUTH)
    client.post(f"/v1/calls/{call_id}/cancel", headers=AUTH)
    client.post("/v1/calls/wait", json={"ids": [call_id], "wait": 0}, headers=AUTH)
    assert not evidence.exists()
    stored = db.all("finished_calls", {"ids": [call_id], "inline": 1 << 20, "budget": 1 << 20})
    assert stored and stored[0]["state"] == "cancelled"
    with db.transaction() as tx:
        row = tx._conn.execute("SELECT args FROM podfn_calls WHERE id = %s", (call_id,)).fetchone()
    assert row is not None and row["args"] == bomb  # stored byte for byte
    pickle.loads(bomb)  # and it really is a bomb
    assert evidence.read_text() == "unpickled"
    os.remove(evidence)


def _finish(db: Database, call_id: str) -> None:
    db.all("claim_queued", {"limit": 10, **UNARMED})
    runtime = Runtime(db, make_conninfo(db.url, user=os.environ["PODFN_RUNTIME_ROLE"]))
    runtime.claim(call_id, 1)
    runtime.succeed(call_id, 1, b"R")


def test_wait_wakes_on_notify(client: FlaskClient, db: Database) -> None:
    call_id = submit(client).json["calls"][0]["id"]
    result: dict[str, Any] = {}

    def waiter() -> None:
        result["response"] = client.get(f"/v1/calls/{call_id}/result?wait=20", headers=AUTH)

    thread = threading.Thread(target=waiter)
    thread.start()
    waiter_obj = client.application.extensions["podfn.waiter"]
    assert _eventually(lambda: call_id in waiter_obj._waiting)
    _finish(db, call_id)
    thread.join(10)
    response = result["response"]
    assert response.status_code == 200
    assert response.headers["X-Podfn-State"] == "succeeded"
    assert response.mimetype == "application/octet-stream" and response.data == b"R"


def test_wait_sees_a_result_that_landed_while_the_listener_was_down(
        client: FlaskClient, db: Database) -> None:
    call_id = submit(client).json["calls"][0]["id"]
    waiter_obj = client.application.extensions["podfn.waiter"]
    listener = waiter_obj._ensure_listening()
    assert listener.connected.wait(10)
    # Take the listening connection down, and finish the call while it is down.
    with db.transaction() as tx:
        tx._conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE application_name = 'podfn-listener' AND datname = current_database()")
    _finish(db, call_id)
    response = client.get(f"/v1/calls/{call_id}/result?wait=20", headers=AUTH)
    assert response.status_code == 200 and response.headers["X-Podfn-State"] == "succeeded"


def test_result_without_finish_answers_202(client: FlaskClient) -> None:
    call_id = submit(client).json["calls"][0]["id"]
    response = client.get(f"/v1/calls/{call_id}/result?wait=0.2", headers=AUTH)
    assert response.status_code == 202 and response.json["state"] == "queued"


def _eventually(predicate: Any, timeout: float = 10.0) -> bool:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_no_auth_only_on_loopback_and_only_when_asked(database_url: str, db: Database) -> None:
    from podfn.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="loopback"):
        create_app(platform_settings(database_url, insecure_no_auth=True, host="0.0.0.0"), db=db)
    app = create_app(platform_settings(database_url, insecure_no_auth=True, api_token=None),
                     db=db)
    try:
        assert app.test_client().get("/v1/calls").status_code == 200
    finally:
        app.extensions["podfn.waiter"].close()
    strict = create_app(platform_settings(database_url, api_token=None), db=db)
    try:
        assert strict.test_client().get("/v1/calls").status_code == 401
    finally:
        strict.extensions["podfn.waiter"].close()
