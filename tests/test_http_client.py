"""The client's HTTP layer: what it retries (only what is safe to repeat) and what it reports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask, jsonify, request

from conftest import ThreadedServer
from podfn.errors import NotAuthorized, NotFound, PlatformError
from podfn.http import APIClient, AsyncAPIClient


@pytest.fixture
def flaky() -> Iterator[tuple[str, list[str]]]:
    """An API stand-in whose first two answers to each route are 503."""
    app = Flask("flaky")
    seen: list[str] = []

    @app.post("/v1/calls/wait")
    @app.post("/v1/calls")
    def handler() -> object:
        seen.append(f"{request.path} {request.headers.get('Idempotency-Key')}")
        if sum(1 for s in seen if s.startswith(request.path + " ")) <= 2:
            return jsonify({"error": {"code": "unavailable", "message": "restarting"}}), 503
        if request.path == "/v1/calls":
            return jsonify({"calls": [{"id": "c1"}]}), 201
        return jsonify({"calls": []})

    @app.get("/v1/calls/<name>")
    def missing(name: str) -> object:
        seen.append(request.path)
        code = {"gone": 404, "secret": 403}.get(name, 422)
        return jsonify({"error": {"code": "x", "message": "no"}}), code

    with ThreadedServer(app) as server:
        yield server.url, seen


def test_long_polls_are_retried_through_5xx(flaky: tuple[str, list[str]]) -> None:
    url, seen = flaky
    with APIClient(url, None) as client:
        assert client.wait(["a"], 0) == []
    assert len([s for s in seen if s.startswith("/v1/calls/wait")]) == 3


def test_submits_are_retried_with_one_idempotency_key(flaky: tuple[str, list[str]]) -> None:
    url, seen = flaky
    with APIClient(url, None) as client:
        ids = client.submit(function_name="f", function=b"f", args=[b"a"], spec={},
                            versions={"python": "3.11", "cloudpickle": "3.1"})
    assert ids == ["c1"]
    keys = {s.split()[1] for s in seen if s.startswith("/v1/calls ")}
    assert len(keys) == 1 and keys != {"None"}


def test_client_errors_are_not_retried_and_map_to_podfn_errors(
        flaky: tuple[str, list[str]]) -> None:
    url, seen = flaky
    with APIClient(url, None) as client:
        with pytest.raises(NotFound):
            client.get_call("gone")
        with pytest.raises(NotAuthorized):
            client.get_call("secret")
        with pytest.raises(PlatformError) as info:
            client.get_call("bad")
    assert info.value.status == 422
    assert seen == ["/v1/calls/gone", "/v1/calls/secret", "/v1/calls/bad"]


def test_clients_share_one_tls_context_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building httpx's TLS context loads the CA bundle (~20 ms); `.aio` makes a client
    per operation, so it must not build one each time."""
    import asyncio

    import httpx

    from podfn import http

    built: list[object] = []
    original = httpx.create_ssl_context

    def counted(*args: object, **kwargs: object) -> object:
        built.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "create_ssl_context", counted)
    http._tls_for.cache_clear()
    monkeypatch.setenv("SSL_CERT_FILE", "")  # httpx's default CA bundle, whatever the machine

    async def three() -> list[AsyncAPIClient]:
        clients = [AsyncAPIClient("https://podfn.example", "t") for _ in range(3)]
        for client in clients:
            await client.__aexit__()
        return clients

    with APIClient("https://podfn.example", "t") as sync:
        asyncs = asyncio.run(three())
    assert len(built) == 1
    contexts = {id(c._http._transport._pool._ssl_context)  # type: ignore[attr-defined]
                for c in [sync, *asyncs]}
    assert contexts == {id(http._tls())}
    assert sync._direct is not None  # (the kept-alive connections use it too)
    assert sync._direct._connection(1.0)._context is http._tls()  # type: ignore[attr-defined]
    import certifi

    first = http._tls()
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # a setting changed: a context of its own
    assert http._tls() is not first and len(built) == 2
    http._tls_for.cache_clear()
