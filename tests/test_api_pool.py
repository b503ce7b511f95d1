"""The API's pool after its connections were killed: every request still answers."""

from __future__ import annotations

import json
import select
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from conftest import TEST_TOKEN, ThreadedServer, platform_settings, wait_until
from podfn_platform import database
from podfn_platform.api.app import create_app
from podfn_platform.database import Database, is_read, lendable

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
META = json.dumps({"function_name": "f", "spec": {}, "client": {"python": "3.11",
                                                                 "cloudpickle": "3.1"}})


@pytest.fixture
def api(database_url: str) -> Iterator[str]:
    db = Database(database_url, min_size=4, max_size=8, name="podfn-api").open()
    app = create_app(platform_settings(database_url), db=db)
    try:
        with ThreadedServer(app) as server:
            yield server.url
    finally:
        app.extensions["podfn.waiter"].close()
        db.close()


def kill_api_connections(admin_url: str, database_url: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return len(conn.execute(
            # (with a timeout: returns once the backend has ended, not when it was signalled)
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'podfn-api'",
            (conninfo_to_dict(database_url)["dbname"],)).fetchall())


def test_reads_and_writes_are_classified() -> None:
    assert is_read("-- a comment\nSELECT id FROM podfn_calls")
    assert not is_read("SELECT pg_notify('podfn_queued', '')")
    assert not is_read("WITH c AS (UPDATE podfn_calls SET state = 'x') SELECT 1")
    assert not is_read("INSERT INTO t VALUES (1)")


def test_killed_api_connections_cost_no_request(api: str, database_url: str,
                                                postgres_url: str) -> None:
    with httpx.Client(base_url=api, headers=AUTH, timeout=30) as http:
        created = http.post("/v1/calls", data={"meta": META},
                            files=[("function", ("f", b"fn")), ("args", ("a", b"args"))])
        call_id = created.json()["calls"][0]["id"]

        def one(i: int) -> int:
            kind = i % 5
            if kind == 0:
                return http.get(f"/v1/calls/{call_id}").status_code
            if kind == 1:
                return http.get("/v1/calls", params={"limit": 5}).status_code
            if kind == 2:
                return http.post("/v1/calls/wait", json={"ids": [call_id], "wait": 0}).status_code
            if kind == 3:
                return http.get("/readyz").status_code
            return http.post("/v1/calls", data={"meta": META},
                             files=[("function", ("f", b"fn")),
                                    ("args", ("a", b"args"))]).status_code

        for _round in range(3):
            assert kill_api_connections(postgres_url, database_url) >= 1
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(one, range(60)))
            assert [s for s in statuses if s >= 400] == []


def _kill(postgres_url: str, database_url: str, application: str) -> int:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        return len(conn.execute(
            # (with a timeout: returns once the backend has ended, not when it was signalled)
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s",
            (conninfo_to_dict(database_url)["dbname"], application)).fetchall())


def test_a_connection_whose_backend_ended_is_not_lent(database_url: str,
                                                      postgres_url: str) -> None:
    """The check looks at the socket: a healthy connection passes without a round trip, an
    ended one (its FATAL message waiting) is asked and refused."""
    with psycopg.connect(database_url, autocommit=True, application_name="podfn-lend") as conn:
        lendable(conn)
        assert _kill(postgres_url, database_url, "podfn-lend") == 1
        wait_until(lambda: select.select([conn.fileno()], [], [], 0)[0],
                   what="the backend's FATAL message")
        with pytest.raises(psycopg.OperationalError):
            lendable(conn)


def test_a_write_the_server_refused_by_ending_the_session_is_sent_again(
        database_url: str, postgres_url: str) -> None:
    """A backend killed an instant before its connection is lent (no check could see it):
    the server answers the statement with 57P01, so it did not run, and it is sent again."""
    db = Database(database_url, min_size=1, max_size=1, name="podfn-unchecked").open()
    try:
        db._pool._check = None  # lend without looking, as in the instant after a kill
        db.all("notify_queued")
        assert _kill(postgres_url, database_url, "podfn-unchecked") == 1
        assert "notify_queued" not in database._READS
        db.all("notify_queued")  # a write: before, this was a 503
    finally:
        db.close()
