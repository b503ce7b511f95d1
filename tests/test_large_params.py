"""Statements carrying large payloads are sent whole (libpq in blocking mode), then the
connection is nonblocking again (podfn_runtime/sending.py, issue 12 fourth round)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import Row

from podfn_platform.database import Database
from podfn_runtime import database as runtime_db
from podfn_runtime.sending import (
    LARGE_PARAMS_BYTES,
    PayloadConnection,
    execute_async,
    payload_bytes,
)


class Spy(PayloadConnection[Row]):
    """Notes libpq's blocking mode as each statement is handed to its cursor."""

    modes: list[int]

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        self.modes.append(self.pgconn.nonblocking)
        return super().cursor(*args, **kwargs)


@pytest.fixture
def spy(database_url: str) -> Iterator[Spy[Any]]:
    with Spy.connect(database_url, autocommit=True) as conn:
        conn.modes = []
        yield conn


def test_payload_bytes_counts_binary_values_text_and_arrays_of_them() -> None:
    assert payload_bytes({"a": b"xy", "b": bytearray(3), "c": [b"1234", None, "text"],
                          "d": "some text", "e": 7}) == 22
    assert payload_bytes((b"abc", memoryview(b"de"))) == 5
    assert payload_bytes(None) == 0


def test_a_large_value_is_sent_blocking_and_the_connection_is_nonblocking_after(
        spy: Spy[Any]) -> None:
    blob = os.urandom(LARGE_PARAMS_BYTES + 1)
    [(back,)] = spy.execute("SELECT %(b)s::bytea", {"b": blob}, binary=True).fetchall()
    assert bytes(back) == blob
    assert spy.modes == [0]
    assert spy.pgconn.nonblocking == 1
    # arrays of payloads count together (a warm worker's succeed_many)
    half = os.urandom(LARGE_PARAMS_BYTES // 2 + 1)
    [(n,)] = spy.execute("SELECT cardinality(%s::bytea[])", ([half, half],)).fetchall()
    assert n == 2
    spy.execute("SELECT %s::bytea", (half,))
    assert spy.modes == [0, 0, 1]
    assert spy.pgconn.nonblocking == 1


def test_a_refused_large_statement_leaves_the_connection_nonblocking_and_usable(
        spy: Spy[Any]) -> None:
    blob = os.urandom(LARGE_PARAMS_BYTES * 3)
    with pytest.raises(psycopg.errors.DivisionByZero):
        spy.execute("SELECT %(b)s::bytea, 1 / 0", {"b": blob})
    assert spy.pgconn.nonblocking == 1
    [(length,)] = spy.execute("SELECT octet_length(%(b)s::bytea)", {"b": blob}).fetchall()
    assert length == len(blob)
    assert spy.modes == [0, 0]


def test_a_connection_that_cannot_be_made_nonblocking_again_is_closed(spy: Spy[Any]) -> None:
    class Stuck:
        """A pgconn whose switch back to nonblocking fails (a broken socket)."""

        def __init__(self, real: Any) -> None:
            self.real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        @property
        def nonblocking(self) -> int:
            return int(self.real.nonblocking)

        @nonblocking.setter
        def nonblocking(self, value: int) -> None:
            if value:
                raise psycopg.OperationalError("setting nonblocking failed")
            self.real.nonblocking = value

    from podfn_runtime import sending

    class Holder:
        pgconn = Stuck(spy.pgconn)

        def close(self) -> None:
            spy.close()

    with sending.sent_whole(Holder()):  # type: ignore[arg-type]
        assert spy.pgconn.nonblocking == 0
    assert spy.closed


def test_the_runtime_and_the_platform_pool_connect_with_it(database_url: str) -> None:
    conn = runtime_db.connect(database_url)
    try:
        assert isinstance(conn, PayloadConnection)
    finally:
        conn.close()
    with Database(database_url, name="podfn-test") as db, db.transaction() as tx:
        assert isinstance(tx._conn, PayloadConnection)
        blob = os.urandom(LARGE_PARAMS_BYTES + 1)
        [row] = tx._conn.execute("SELECT %(b)s::bytea AS b", {"b": blob}, binary=True).fetchall()
        assert bytes(row["b"]) == blob
        assert tx._conn.pgconn.nonblocking == 1


def test_the_async_variant_sends_blocking_and_restores(database_url: str) -> None:
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


def test_a_batch_carrying_large_payloads_between_its_rows_is_sent_whole(
        spy: Spy[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Transaction.many (a map's arguments): executemany is no `execute`, so it asks."""
    from podfn_platform import database

    monkeypatch.setitem(database._QUERIES, "test_echo", "SELECT octet_length(%(b)s::bytea)")
    tx = database.Transaction(spy)
    half = os.urandom(LARGE_PARAMS_BYTES // 2 + 1)
    tx.many("test_echo", [{"b": half}, {"b": half}])
    tx.many("test_echo", [{"b": b"small"}, {"b": half}])
    assert spy.modes == [0, 1]
    assert spy.pgconn.nonblocking == 1
