"""The API's token cache: a stored token costs no lookup per request, and revoking it
still takes effect at once (NOTIFY podfn_tokens), in this process and in others."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import TEST_TOKEN, platform_settings, wait_until
from podfn_platform.api import auth
from podfn_platform.api.app import create_app
from podfn_platform.api.auth import TokenCache
from podfn_platform.database import Database

ADMIN = {"Authorization": f"Bearer {TEST_TOKEN}"}


@pytest.fixture
def app(database_url: str, db: Database) -> Iterator[Any]:
    app = create_app(platform_settings(database_url), db=db)
    waiter = app.extensions["podfn.waiter"]
    wait_until(waiter.listening, what="the API's listener connected")
    yield app
    waiter.close()


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hashes looked up in the database, in order."""
    seen: list[str] = []
    real = auth._stored_token

    def counting(db: Database, hashed: str) -> Any:
        seen.append(hashed)
        return real(db, hashed)

    monkeypatch.setattr(auth, "_stored_token", counting)
    return seen


def _token(client: Any, name: str) -> dict[str, str]:
    made = client.post("/v1/tokens", json={"name": name, "scopes": ["read"]}, headers=ADMIN)
    assert made.status_code == 201
    return {"Authorization": f"Bearer {made.json['token']}"}


def test_a_stored_token_is_looked_up_once(app: Any, lookups: list[str]) -> None:
    client = app.test_client()
    reader = _token(client, "reader")
    for _ in range(3):
        assert client.get("/v1/calls", headers=reader).status_code == 200
    assert len(lookups) == 1


def test_revoking_here_takes_effect_at_once(app: Any) -> None:
    client = app.test_client()
    reader = _token(client, "reader")
    assert client.get("/v1/calls", headers=reader).status_code == 200
    assert client.post("/v1/tokens/reader/revoke", headers=ADMIN).status_code == 200
    assert client.get("/v1/calls", headers=reader).status_code == 401


def test_a_revocation_elsewhere_is_heard(app: Any, db: Database) -> None:
    """Another API process revokes it: this one hears the NOTIFY and forgets the token."""
    client = app.test_client()
    reader = _token(client, "reader")
    assert client.get("/v1/calls", headers=reader).status_code == 200
    assert db.one("revoke_token", {"ref": "reader"}) is not None  # not through this app
    wait_until(lambda: client.get("/v1/calls", headers=reader).status_code == 401,
               timeout=3, what="the revoked token refused (before the 5 s TTL)")


def test_an_unannounced_revocation_lasts_at_most_the_ttl(app: Any, database_url: str) -> None:
    """An API from before the NOTIFY revoking during a rolling update: bounded by the TTL."""
    waiter = app.extensions["podfn.waiter"]
    cache = app.extensions["podfn.token_cache"] = TokenCache(waiter.listening, ttl=0.5)
    waiter.on_tokens_changed(cache.clear)
    client = app.test_client()
    reader = _token(client, "reader")
    assert client.get("/v1/calls", headers=reader).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE podfn_tokens SET revoked_at = now() WHERE name = 'reader'")
    wait_until(lambda: client.get("/v1/calls", headers=reader).status_code == 401,
               timeout=2, what="the token refused once its entry expired")  # < the 5 s default


def test_without_a_listener_every_request_looks(db: Database, lookups: list[str]) -> None:
    cache = TokenCache(lambda: False)
    assert cache.lookup(db, "0" * 64) is None
    assert cache.lookup(db, "0" * 64) is None
    assert len(lookups) == 2  # and an unknown secret is never remembered either
