"""Hostile input to the API: 4xx naming what was wrong, never a 500, nothing half-written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from conftest import TEST_TOKEN, Refuser, platform_settings
from podfn_platform.api.app import create_app
from podfn_platform.database import Database

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
CLIENT = {"python": "3.11.7", "cloudpickle": "3.1.2"}
DEEP = "[" * 100_000 + "]" * 100_000
LONE_SURROGATE = '"\\ud800"'  # JSON for a string holding one lone surrogate


@pytest.fixture
def client(database_url: str, db: Database) -> Iterator[FlaskClient]:
    app = create_app(platform_settings(database_url), db=db)
    yield app.test_client()
    app.extensions["podfn.waiter"].close()


def multipart(meta: str) -> dict[str, Any]:
    import io
    return {"meta": meta, "function": (io.BytesIO(b"fn"), "function"),
            "args": [(io.BytesIO(b"a"), "a0")]}


def deploy_meta(name: str) -> str:
    return json.dumps({"name": name, "spec": {}, "client": CLIENT})


@pytest.mark.parametrize("method, path, body", [
    ("get", "/v1/calls/%00abc", None),
    ("get", "/v1/calls/abc%ED%A0%80", None),
    ("get", "/v1/calls?function=%00", None),
    ("get", "/v1/functions/a%00b", None),
    ("post", "/v1/functions/a%00b/invoke", "{}"),
    ("post", "/v1/tokens/a%00b/revoke", None),
    ("post", "/v1/calls/wait", '{"ids": ["\\u0000"]}'),
    ("post", "/v1/calls/wait", '{"ids": [' + LONE_SURROGATE + ']}'),
    ("post", "/v1/calls/wait", DEEP),
    ("post", "/v1/tokens", '{"name": ' + LONE_SURROGATE + ', "scopes": ["read"]}'),
    ("post", "/v1/functions/x/rollback", DEEP),
])
def test_nul_surrogates_and_deep_json_are_4xx(refuser: Refuser, method: str, path: str,
                                              body: str | None) -> None:
    response = getattr(refuser.client, method)(path, headers=AUTH, data=body,
                                       content_type="application/json")
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]
    assert response.json["error"]["code"] in ("invalid_text", "too_deep", "not_found",
                                              "malformed_json", "invalid_field")


@pytest.mark.parametrize("meta, code", [
    (json.dumps({"function_name": "f\x00", "spec": {}, "client": CLIENT}), "invalid_text"),
    ('{"function_name": ' + LONE_SURROGATE + ', "spec": {}, "client": ' + json.dumps(CLIENT) + "}",
     "invalid_text"),
    (json.dumps({"function_name": "f", "spec": {"env": {"A": "x\x00"}}, "client": CLIENT}),
     "invalid_text"),
    ('{"function_name": "f", "spec": ' + DEEP + "}", "too_deep"),
])
def test_submissions_with_unstorable_text_are_refused(refuser: Refuser, meta: str,
                                                      code: str) -> None:
    response = refuser.client.post("/v1/calls", data=multipart(meta), headers=AUTH,
                                   content_type="multipart/form-data")
    assert response.status_code == 400 and response.json["error"]["code"] == code
    assert refuser.db.all("list_calls", {"state": None, "function": None, "limit": 5}) == []


@pytest.mark.parametrize("name", ["a/b", " padded", "tab\tinside", "x\n", "..", "", "z" * 201,
                                  "nul\x00", "zero\u200bwidth"])
def test_function_names_must_stay_reachable(refuser: Refuser, name: str) -> None:
    response = refuser.client.post("/v1/functions", data=multipart(deploy_meta(name)),
                                   headers=AUTH, content_type="multipart/form-data")
    assert response.status_code in (400, 422), response.get_data(as_text=True)[:300]
    assert refuser.client.get("/v1/functions", headers=AUTH).json["functions"] == []


def test_a_valid_name_deploys_and_is_reachable(client: FlaskClient) -> None:
    response = client.post("/v1/functions", data=multipart(deploy_meta("team.model-v2")),
                           headers=AUTH, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    assert client.get("/v1/functions/team.model-v2", headers=AUTH).status_code == 200


def test_ambiguous_token_revoke_is_refused(client: FlaskClient, db: Database) -> None:
    first = client.post("/v1/tokens", json={"name": "alice", "scopes": ["read"]}, headers=AUTH).json
    # A name equal to another token's id (possible for rows written before names were checked).
    with db.transaction() as tx:
        tx._conn.execute("INSERT INTO podfn_tokens (id, name, hash, scopes) "
                         "VALUES ('tok_other', %s, 'h', '{read}')", (first["id"],))
    response = client.post(f"/v1/tokens/{first['id']}/revoke", headers=AUTH)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "ambiguous_reference"
    tokens = client.get("/v1/tokens", headers=AUTH).json["tokens"]
    assert all(t["revoked_at"] is None for t in tokens)
    assert client.post("/v1/tokens/tok_other/revoke", headers=AUTH).status_code == 200


def test_no_auth_refuses_to_serve_when_bound_beyond_loopback(database_url: str,
                                                             db: Database) -> None:
    """PODFN_HOST may say 127.0.0.1 while gunicorn was told --bind 0.0.0.0: the bind decides."""
    app = create_app(platform_settings(database_url, insecure_no_auth=True, api_token=None),
                     db=db)
    try:
        client = app.test_client()
        assert client.get("/v1/calls", environ_overrides={"SERVER_NAME": "127.0.0.1"}
                          ).status_code == 200
        refused = client.get("/v1/calls", environ_overrides={"SERVER_NAME": "0.0.0.0"})
        assert refused.status_code == 403
        assert refused.json["error"]["code"] == "no_auth_off_loopback"
    finally:
        app.extensions["podfn.waiter"].close()


def test_stock_gunicorn_bound_to_all_addresses_serves_nothing_without_auth(
        database_url: str) -> None:
    """The documented `gunicorn --bind` route, with PODFN_HOST still saying loopback."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from podfn_platform.dev import free_port

    port = free_port("0.0.0.0")
    env = {**os.environ, "PODFN_DATABASE_URL": database_url, "PODFN_INSECURE_NO_AUTH": "1",
           "PODFN_HOST": "127.0.0.1", "PODFN_WORKERS": "1"}
    env.pop("PODFN_API_TOKEN", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:podfn_platform.gunicorn_conf",
         "--bind", f"0.0.0.0:{port}", "podfn_platform.api.app:create_app()"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/calls", timeout=5)
        assert answer.status_code == 403
        assert "0.0.0.0" in answer.json()["error"]["message"]
    finally:
        server.terminate()
        server.wait(30)
