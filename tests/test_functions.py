"""Deployed functions, HTTP invoke, idempotency and scoped tokens, end to end."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

import podfn
from conftest import Platform
from podfn import remote
from podfn.errors import NotAuthorized, NotFound
from podfn.http import APIClient

pytestmark = pytest.mark.e2e


@remote(name="add", memory="256Mi")
def add(a: int, b: int) -> int:
    return a + b


@remote(name="add")
def add_v2(a: int, b: int) -> int:
    return 100 + a + b


@remote(name="boom")
def boom(x: int) -> int:
    raise ValueError(f"bad x {x}")


@remote(name="opaque")
def opaque() -> object:
    return object()


@remote(name="sleepy")
def sleepy(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "rested"


def http(p: Platform, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=p.url, timeout=60,
                        headers={"Authorization": f"Bearer {token or p.token}"})


def test_deploy_versions_lookup_and_rollback(platform: Platform) -> None:
    assert add.deploy()["version"] == 1
    fn = podfn.Function.lookup("add")
    assert fn.remote(2, 3) == 5
    assert add_v2.deploy()["version"] == 2
    assert podfn.Function.lookup("add").remote(2, 3) == 105
    assert list(fn.map([1, 2], [1, 1])) == [102, 103]
    call = fn.options(timeout=30).spawn(0, 0)
    assert call.result() == 100
    info = call.info()
    assert info["function_version"] == 2 and info["spec"]["timeout"] == 30
    assert info["spec"]["memory"] is None  # v2 was deployed without hints
    listed = {f["name"]: f for f in add.client.functions()}
    assert listed["add"]["live_version"] == 2 and listed["add"]["deployed_by"] == "root"
    rolled = add.client.rollback("add", None)
    assert (rolled["live_version"], rolled["previous_version"]) == (1, 2)
    assert podfn.Function.lookup("add").remote(2, 3) == 5
    assert add.client.rollback("add", 2)["live_version"] == 2
    with pytest.raises(podfn.PlatformError, match="must be one of"):
        add.client.rollback("add", 9)
    with pytest.raises(NotFound):
        podfn.Function.lookup("nope")


def test_invoke_over_http_with_json(platform: Platform) -> None:
    add.deploy()
    with http(platform) as client:
        response = client.post("/v1/functions/add/invoke", json={"args": [2], "kwargs": {"b": 5}})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["state"], body["value"], body["function"]) == ("succeeded", 7, "add")
        assert "result" not in body


def test_invoke_that_raises_answers_with_the_error(platform: Platform) -> None:
    boom.deploy()
    with http(platform) as client:
        body = client.post("/v1/functions/boom/invoke", json={"args": [3]}).json()
    assert body["state"] == "failed"
    assert body["error"]["type"] == "builtins.ValueError"
    assert body["error"]["message"] == "bad x 3"
    assert "raise ValueError" in body["error"]["traceback"]
    assert "pickle" not in body["error"]


def test_invoke_with_a_result_that_is_not_json(platform: Platform) -> None:
    opaque.deploy()
    with http(platform) as client:
        body = client.post("/v1/functions/opaque/invoke", json={}).json()
    assert body["state"] == "failed"
    assert "not JSON serializable" in body["reason"]


def test_invoke_that_outlasts_the_wait_answers_202_with_a_location(platform: Platform) -> None:
    sleepy.deploy()
    with http(platform) as client:
        response = client.post("/v1/functions/sleepy/invoke?wait=0", json={"args": [0.5]})
        assert response.status_code == 202
        location = response.headers["Location"]
        assert location == response.json()["location"]
        finished = client.get(location, params={"wait": 30})
        assert finished.status_code == 200 and finished.json()["value"] == "rested"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"args": 1}, 422, "invalid_field"), ({"kwargs": []}, 422, "invalid_field"),
    ({"argz": []}, 422, "invalid_field"), ([1, 2], 400, "malformed_json"),
])
def test_invoke_rejects_malformed_bodies(platform: Platform, body: Any, status: int,
                                         code: str) -> None:
    add.deploy()
    with http(platform) as client:
        response = client.post("/v1/functions/add/invoke", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert platform.db.all("list_calls", {"state": None, "function": None, "limit": 5}) == []


def test_invoke_unknown_function_is_404(platform: Platform) -> None:
    with http(platform) as client:
        response = client.post("/v1/functions/ghost/invoke", json={})
    assert response.status_code == 404 and "podfn deploy" in response.json()["error"]["message"]


def test_idempotency_key_on_invoke(platform: Platform) -> None:
    add.deploy()
    with http(platform) as client:
        headers = {"Idempotency-Key": "order-42"}
        first = client.post("/v1/functions/add/invoke", json={"args": [1, 2]}, headers=headers)
        again = client.post("/v1/functions/add/invoke", json={"args": [1, 2]}, headers=headers)
        assert first.json()["id"] == again.json()["id"]
        other = client.post("/v1/functions/add/invoke", json={"args": [9, 9]}, headers=headers)
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "idempotency_key_reused"
    rows = platform.db.all("list_calls", {"state": None, "function": None, "limit": 10})
    assert len(rows) == 1


def test_concurrent_duplicates_create_exactly_one_call(platform: Platform) -> None:
    client = APIClient(platform.url, platform.token)
    function = podfn.serialization.dumps(add.fn)
    args = [podfn.serialization.dumps(((1, 1), {}))]
    results: list[list[str]] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        with httpx.Client(base_url=platform.url, timeout=60) as h:
            response = h.post(
                "/v1/calls", headers={"Authorization": f"Bearer {platform.token}",
                                      "Idempotency-Key": "same"},
                data={"meta": '{"function_name": "f", "spec": {}, "client": '
                              '{"python": "3.11.7", "cloudpickle": "3.1.2"}}'},
                files=[("function", ("f", function)), ("args", ("a", args[0]))])
            assert response.status_code in (200, 201), response.text
            results.append([c["id"] for c in response.json()["calls"]])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 and len({tuple(r) for r in results}) == 1
    rows = platform.db.all("list_calls", {"state": None, "function": None, "limit": 50})
    assert len(rows) == 1
    client.close()


def test_scopes(platform: Platform) -> None:
    add.deploy()
    admin = APIClient(platform.url, platform.token)
    invoker = admin.create_token("billing", ["invoke"])
    submitter = admin.create_token("ci", ["submit"])
    reader = admin.create_token("dash", ["read"])
    assert invoker["token"].startswith("pfn_") and "hash" not in invoker

    with http(platform, invoker["token"]) as client:
        invoked = client.post("/v1/functions/add/invoke", json={"args": [1, 2]})
        assert invoked.status_code == 200 and invoked.json()["value"] == 3
        assert client.get(f"/v1/calls/{invoked.json()['id']}").status_code == 200  # its own
        assert client.get("/v1/calls").status_code == 403
        denied = client.post("/v1/functions/add/calls", data={"meta": "{}"})
        assert denied.status_code == 403
        assert "lacks the submit scope" in denied.json()["error"]["message"]
        assert client.get("/v1/tokens").status_code == 403

    sub = APIClient(platform.url, submitter["token"])
    call_id = sub.submit(function_name="f", function=podfn.serialization.dumps(abs),
                         args=[podfn.serialization.dumps(((-1,), {}))], spec={},
                         versions=podfn.serialization.client_versions())[0]
    assert podfn.Call.from_id(call_id, client=sub).result() == 1
    with pytest.raises(NotAuthorized):
        sub.deploy(name="x", function=b"f", spec={}, versions={"python": "3", "cloudpickle": "3"})
    with http(platform, invoker["token"]) as client:
        assert client.get(f"/v1/calls/{call_id}").status_code == 403  # not its call

    rd = APIClient(platform.url, reader["token"])
    assert any(c["id"] == call_id for c in rd.list_calls())
    with pytest.raises(NotAuthorized):
        rd.cancel(call_id)

    admin.revoke_token("billing")
    with http(platform, invoker["token"]) as client:
        assert client.post("/v1/functions/add/invoke", json={"args": [1, 2]}).status_code == 401
    listed = {t["name"]: t for t in admin.tokens()}
    assert listed["billing"]["revoked_at"] is not None and listed["ci"]["revoked_at"] is None
    calls = platform.db.all("list_calls", {"state": None, "function": None, "limit": 50})
    assert len(calls) == 2  # nothing stored for the refused requests
    for c in (admin, sub, rd):
        c.close()


def test_token_names_are_unique_and_scopes_checked(platform: Platform) -> None:
    admin = APIClient(platform.url, platform.token)
    admin.create_token("one", ["read"])
    with pytest.raises(podfn.PlatformError) as info:
        admin.create_token("one", ["read"])
    assert info.value.status == 409
    with pytest.raises(podfn.PlatformError) as info:
        admin.create_token("two", ["root"])
    assert info.value.status == 422
    admin.close()


def test_deploying_a_file_finds_its_functions(platform: Platform, tmp_path: Path) -> None:
    from podfn.cli.functions import load_functions

    app = tmp_path / "app.py"
    app.write_text("from podfn import remote\n\n@remote(cpu='1')\ndef double(x):\n    return 2 * x\n\n"
                   "@remote(name='triple')\ndef t(x):\n    return 3 * x\n\nnot_remote = 1\n")
    found = {f.deploy_name: f for f in load_functions(app)}
    assert set(found) == {"double", "triple"}
    for fn in found.values():
        fn.deploy()
    assert podfn.Function.lookup("triple").remote(2) == 6
