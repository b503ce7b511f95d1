"""The dashboard through Flask's test client: sign-in cookie, CSRF, scopes, every page."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import cloudpickle
import pytest
from flask import Flask
from flask.testing import FlaskClient

from attempts import UNARMED, Runtime
from conftest import TEST_TOKEN, platform_settings
from podfn_platform.api.app import create_app
from podfn_platform.api.auth import create_token
from podfn_platform.database import Database, jsonb
from podfn_platform.submission import NewCalls, record_calls, store_payload
from podfn_platform.ui import session


@pytest.fixture
def app(database_url: str, db: Database) -> Iterator[Flask]:
    app = create_app(platform_settings(database_url), db=db)
    yield app
    app.extensions["podfn.waiter"].close()


def signed_in(app: Flask, token: str = TEST_TOKEN) -> FlaskClient:
    client = app.test_client()
    response = client.post("/ui/signin", data={"token": token})
    assert response.status_code == 302, response.text
    return client


def csrf_of(client: FlaskClient, path: str = "/ui/") -> str:
    page = client.get(path).text
    found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
    assert found, page[:500]
    return found[1]


def a_call(db: Database, name: str = "f", spec: dict[str, object] | None = None) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}.0"
    with db.transaction() as tx:
        calls = NewCalls(name, store_payload(tx, cloudpickle.dumps(pow)), spec or {}, python,
                         cloudpickle.__version__)
        [call_id] = record_calls(tx, calls, [cloudpickle.dumps(((2, 3), {}))])
    return call_id


def deploy(db: Database, name: str, versions: int) -> None:
    with db.transaction() as tx:
        digest = store_payload(tx, cloudpickle.dumps(pow))
        for v in range(versions):
            row = tx.one("insert_function_version", {
                "name": name, "function_digest": digest, "spec": jsonb({"cpu": f"{v + 1}"}),
                "client_python": "3.11.0", "client_cloudpickle": cloudpickle.__version__,
                "deployed_by": "tester"})
            assert row is not None
            tx.all("set_live_version", {"name": name, "version": row["version"]})


def test_signing_in_sets_an_httponly_samesite_strict_cookie(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/ui/calls").headers["Location"].startswith("/ui/signin?next=")
    wrong = client.post("/ui/signin", data={"token": "nope"})
    assert wrong.status_code == 401 and "not recognised" in wrong.text
    assert "Set-Cookie" not in wrong.headers
    ok = client.post("/ui/signin", data={"token": TEST_TOKEN, "next": "/ui/calls"})
    assert ok.status_code == 302 and ok.headers["Location"] == "/ui/calls"
    cookie = ok.headers["Set-Cookie"]
    assert cookie.startswith(f"{session.COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert client.get("/ui/calls").status_code == 200
    # An open redirect is refused: `next` must stay on the dashboard.
    away = app.test_client().post("/ui/signin", data={"token": TEST_TOKEN,
                                                      "next": "https://evil.example/"})
    assert away.headers["Location"] == "/ui/"


def test_every_post_needs_the_csrf_token_of_its_cookie(app: Flask, db: Database) -> None:
    call_id = a_call(db)
    client = signed_in(app)
    assert client.post(f"/ui/calls/{call_id}/cancel").status_code == 403
    assert client.post(f"/ui/calls/{call_id}/cancel",
                       data={"csrf_token": "0" * 64}).status_code == 403
    other = signed_in(app, create_token(db, "other", ["admin"])[1])  # type: ignore[index]
    foreign = csrf_of(other)
    assert client.post(f"/ui/calls/{call_id}/cancel",
                       data={"csrf_token": foreign}).status_code == 403
    assert db.one("get_call", {"id": call_id})["state"] == "queued"  # type: ignore[index]
    done = client.post(f"/ui/calls/{call_id}/cancel", data={"csrf_token": csrf_of(client)})
    assert done.status_code == 302
    assert db.one("get_call", {"id": call_id})["state"] == "cancelled"  # type: ignore[index]
    # The header works too (the page's script).
    second = a_call(db)
    assert client.post(f"/ui/calls/{second}/cancel",
                       headers={session.CSRF_HEADER: csrf_of(client)}).status_code == 302


def test_a_read_token_sees_no_buttons_and_is_refused_when_posting(app: Flask,
                                                                  db: Database) -> None:
    call_id = a_call(db)
    deploy(db, "g", 2)
    reader = signed_in(app, create_token(db, "reader", ["read"])[1])  # type: ignore[index]
    page = reader.get(f"/ui/calls/{call_id}").text
    assert call_id in page and 'id="cancel"' not in page
    fpage = reader.get("/ui/functions/g").text
    assert "Roll back" not in fpage and 'id="invoke"' not in fpage
    token = csrf_of(reader)
    assert reader.post(f"/ui/calls/{call_id}/cancel",
                       data={"csrf_token": token}).status_code == 403
    assert reader.post("/ui/functions/g/rollback",
                       data={"csrf_token": token, "version": "1"}).status_code == 403
    assert db.one("get_call", {"id": call_id})["state"] == "queued"  # type: ignore[index]
    assert db.one("get_function", {"name": "g"})["live_version"] == 2  # type: ignore[index]
    # Without read the dashboard shows nothing at all.
    submitter = signed_in(app, create_token(db, "sub", ["submit"])[1])  # type: ignore[index]
    assert submitter.get("/ui/calls").status_code == 403


def test_the_pages_render_with_data(app: Flask, db: Database) -> None:
    call_id = a_call(db, "work", {"cpu": "1", "memory": "256Mi"})
    deploy(db, "g", 2)
    db.one("cancel", {"id": call_id, "reason": "because"})
    client = signed_in(app)
    overview = client.get("/ui/").text
    assert "<svg" in overview and "Calls per minute by outcome" in overview
    assert "Queue depth" in overview and "launch latency" in overview
    calls = client.get("/ui/calls?state=cancelled&function=work&range=1h").text
    assert call_id[:12] in calls
    assert call_id[:12] not in client.get("/ui/calls?state=failed").text
    assert call_id[:12] in client.get(f"/ui/calls?id={call_id[:6]}").text
    assert client.get("/ui/calls?state=bogus").status_code == 400
    live = client.get(f"/ui/api/calls/{call_id}/live").json
    assert live is not None and live["state"] == "cancelled" and live["final"]
    page = client.get(f"/ui/calls/{call_id}").text
    assert "because" in page and "memory=256Mi" in page and f"podfn call {call_id}" in page
    assert "Roll back to 1" in client.get("/ui/functions/g").text
    rolled = client.post("/ui/functions/g/rollback",
                         data={"csrf_token": csrf_of(client), "version": "1"})
    assert rolled.status_code == 302
    assert db.one("get_function", {"name": "g"})["live_version"] == 1  # type: ignore[index]
    invoked = client.post("/ui/functions/g/invoke",
                          data={"csrf_token": csrf_of(client), "args": "[2, 5]"})
    assert invoked.status_code == 302 and "/ui/calls/" in invoked.headers["Location"]
    bad = client.post("/ui/functions/g/invoke",
                      data={"csrf_token": csrf_of(client), "args": "[2,"})
    assert bad.status_code == 400 and "must be JSON" in bad.text
    for asset in ("ui.js", "ui.css"):
        with client.get(f"/ui/static/{asset}") as served:  # ours, never a CDN's
            assert served.status_code == 200 and served.data


def test_a_running_call_shows_its_output_so_far(app: Flask, db: Database,
                                                runtime_database_url: str) -> None:
    """The page reads output as the logs route does: the chunks while the call runs."""
    runtime = Runtime(db, runtime_database_url)
    call_id = a_call(db)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    assert runtime.claim(call_id, 1) is not None
    assert runtime.call("append_output", call_id, 1, stream="stderr", offset=0,
                        data="half way\n") is not None
    client = signed_in(app)
    live = client.get(f"/ui/api/calls/{call_id}/live").json
    assert live is not None and (live["stdout"], live["stderr"]) == ("", "half way\n")
    assert "half way" in client.get(f"/ui/calls/{call_id}").text


def test_a_post_from_another_origin_is_refused_even_to_sign_in(app: Flask, db: Database) -> None:
    client = app.test_client()
    away = client.post("/ui/signin", data={"token": TEST_TOKEN},
                       headers={"Origin": "https://evil.example"})
    assert away.status_code == 403 and "Set-Cookie" not in away.headers
    same = client.post("/ui/signin", data={"token": TEST_TOKEN},
                       headers={"Origin": "http://localhost"})
    assert same.status_code == 302


def test_without_auth_the_dashboard_signs_in_without_a_token(database_url: str,
                                                            db: Database) -> None:
    app = create_app(platform_settings(database_url, api_token=None, insecure_no_auth=True),
                     db=db)
    try:
        client = app.test_client()
        signed = client.post("/ui/signin", data={}, environ_base={"SERVER_NAME": "127.0.0.1"})
        assert signed.status_code == 302, signed.text
        page = client.get("/ui/calls", environ_base={"SERVER_NAME": "127.0.0.1"})
        assert page.status_code == 200 and "anonymous" in page.text
        # Without the CSRF token a POST is still refused.
        call_id = a_call(db)
        refused = client.post(f"/ui/calls/{call_id}/cancel",
                              environ_base={"SERVER_NAME": "127.0.0.1"})
        assert refused.status_code == 403
    finally:
        app.extensions["podfn.waiter"].close()
