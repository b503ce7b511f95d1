"""Statements carrying large payloads are sent whole (libpq in blocking mode), then the
connection is nonblocking again (podfn_runtime.database.execute, issue 12 fourth round)."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest

from podfn_runtime.database import LARGE_PARAMS_BYTES, execute, payload_bytes


class Spy:
    """A connection whose `execute` notes libpq's blocking mode as the statement is sent."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self.modes: list[int] = []

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.modes.append(self.pgconn.nonblocking)
        return self.conn.execute(*args, **kwargs)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def conn(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def test_payload_bytes_counts_binary_values_and_arrays_of_them() -> None:
    assert payload_bytes({"a": b"xy", "b": bytearray(3), "c": [b"1234", None, "text"],
                          "d": "not bytes", "e": 7}) == 9
    assert payload_bytes(None) == 0


def test_a_large_value_is_sent_blocking_and_the_connection_is_nonblocking_after(
        conn: psycopg.Connection[Any]) -> None:
    spy = Spy(conn)
    blob = os.urandom(LARGE_PARAMS_BYTES + 1)
    [(back,)] = execute(spy, "SELECT %(b)s::bytea", {"b": blob},  # type: ignore[arg-type]
                        binary=True).fetchall()
    assert bytes(back) == blob
    assert spy.modes == [0]
    assert conn.pgconn.nonblocking == 1
    # arrays of payloads count together (a warm worker's succeed_many)
    half = os.urandom(LARGE_PARAMS_BYTES // 2 + 1)
    [(n,)] = execute(spy, "SELECT cardinality(%(r)s::bytea[])",  # type: ignore[arg-type]
                     {"r": [half, half]}).fetchall()
    assert n == 2
    assert spy.modes == [0, 0]
    execute(spy, "SELECT %(b)s::bytea", {"b": half})  # type: ignore[arg-type]
    assert spy.modes == [0, 0, 1]
    assert conn.pgconn.nonblocking == 1


def test_a_refused_large_statement_leaves_the_connection_nonblocking_and_usable(
        conn: psycopg.Connection[Any]) -> None:
    blob = os.urandom(LARGE_PARAMS_BYTES * 3)
    with pytest.raises(psycopg.errors.DivisionByZero):
        execute(conn, "SELECT %(b)s::bytea, 1 / 0", {"b": blob})
    assert conn.pgconn.nonblocking == 1
    [(length,)] = execute(conn, "SELECT octet_length(%(b)s::bytea)", {"b": blob}).fetchall()
    assert length == len(blob)


def test_a_connection_that_cannot_be_made_nonblocking_again_is_closed(
        conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    class Stuck:
        """A pgconn whose switch back to nonblocking fails (a broken socket)."""

        def __init__(self, real: Any) -> None:
            self.real = real

        @property
        def nonblocking(self) -> int:
            return int(self.real.nonblocking)

        @nonblocking.setter
        def nonblocking(self, value: int) -> None:
            if value:
                raise psycopg.OperationalError("setting nonblocking failed")
            self.real.nonblocking = value

    class Broken(Spy):
        def __init__(self, conn: psycopg.Connection[Any]) -> None:
            super().__init__(conn)
            self.pgconn = Stuck(conn.pgconn)  # type: ignore[assignment]

    broken = Broken(conn)
    blob = os.urandom(LARGE_PARAMS_BYTES + 1)
    execute(broken, "SELECT %(b)s::bytea", {"b": blob})  # type: ignore[arg-type]
    assert conn.closed


def test_the_async_variant_sends_blocking_and_restores(database_url: str) -> None:
    import asyncio

    from podfn_runtime.database import execute_async

    async def main() -> tuple[list[int], int, bytes]:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        modes: list[int] = []
        real = conn.execute

        async def spy(*args: Any, **kwargs: Any) -> Any:
            modes.append(conn.pgconn.nonblocking)
            return await real(*args, **kwargs)

        conn.execute = spy  # type: ignore[method-assign]
        blob = os.urandom(LARGE_PARAMS_BYTES + 1)
        cur = await execute_async(conn, "SELECT %(b)s::bytea", {"b": blob}, binary=True)
        [(back,)] = await cur.fetchall()
        await execute_async(conn, "SELECT 1", {})
        after = conn.pgconn.nonblocking
        await conn.close()
        return modes, after, bytes(back)

    modes, after, back = asyncio.run(main())
    assert modes == [0, 1] and after == 1
    assert len(back) == LARGE_PARAMS_BYTES + 1


def test_the_platform_pool_sends_large_statements_whole(
        db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    from collections.abc import Iterator

    from podfn_platform import database as platform_db

    seen: list[int] = []
    real = platform_db.sent_whole

    @contextlib.contextmanager
    def spy(conn: Any) -> Iterator[None]:
        with real(conn):
            seen.append(conn.pgconn.nonblocking)
            yield

    monkeypatch.setattr(platform_db, "sent_whole", spy)
    blob = os.urandom(LARGE_PARAMS_BYTES + 1)
    with db.transaction() as tx:
        assert isinstance(tx._conn, platform_db.PayloadConnection)
        [row] = tx._conn.execute("SELECT %(b)s::bytea AS b", {"b": blob}, binary=True).fetchall()
        assert bytes(row["b"]) == blob
        assert tx._conn.pgconn.nonblocking == 1
        tx._conn.execute("SELECT %s::bytea", (b"small",))
    assert seen == [0]
