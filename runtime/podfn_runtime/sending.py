"""Statements that carry large payloads, sent whole (issue 12, fourth round).

psycopg keeps libpq in nonblocking mode. A statement's whole message (a
100 MB bytea included) sits in libpq's output buffer; each flush sends what
the socket takes (a few hundred KiB) and then moves the unsent rest of the
buffer to its front (pqSendSome's memmove), once per socket-full: quadratic
in the payload's size. A 100 MB argument or result cost its sender ~1.4 s of
CPU that way on a Unix socket, and the statement took three times as long;
at 1 MB it makes no difference. So a statement whose parameters carry over
LARGE_PARAMS_BYTES is sent with libpq in blocking mode, and the connection
is nonblocking again before anything else runs on it.

The runtime's connections, the platform's pool and the local forkserver's
supervisor all send through here. psycopg is imported with this module,
which the runtime imports only when it connects (database._transient says
why).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.abc import Params
from psycopg.rows import Row

LARGE_PARAMS_BYTES = 1 << 20
_BYTES = (bytes, bytearray, memoryview)


def payload_bytes(params: Any) -> int:
    """The bytes of the binary values (and arrays of them) among `params` (a mapping or
    a sequence, as psycopg takes them)."""
    values = params.values() if isinstance(params, dict) else params or ()
    total = 0
    for value in values:
        if isinstance(value, (*_BYTES, str)):  # (a str: an invoke's JSON result, say)
            total += len(value)
        elif isinstance(value, (list, tuple)):
            total += sum(len(v) for v in value if isinstance(v, (*_BYTES, str)))
    return total


@contextlib.contextmanager
def sent_whole(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """libpq in blocking mode for the statement run inside: it sends the whole message
    before it returns (with the GIL released, and reading what the server says
    meanwhile, as it does anyway) and moves its buffer once; the answer is then awaited
    as usual. The connection is nonblocking again afterwards, or closed if that fails
    (it is never left blocking for a statement that did not ask for it). A signal's
    Python handler (the runtime's SIGTERM) runs once the send returns: as long as
    Postgres takes to read the message, ~1 s for 100 MB here."""
    pgconn = conn.pgconn
    pgconn.nonblocking = 0
    try:
        yield
    finally:
        try:
            pgconn.nonblocking = 1
        except Exception:  # a broken connection: never reused half-configured
            conn.close()


class PayloadConnection(psycopg.Connection[Row]):
    """A connection whose statements with over LARGE_PARAMS_BYTES of payload are sent
    whole (`sent_whole`); any other statement runs as psycopg runs it."""

    def execute(self, query: Any, params: Params | None = None, *,
                prepare: bool | None = None, binary: bool = False) -> psycopg.Cursor[Row]:
        if payload_bytes(params) <= LARGE_PARAMS_BYTES:
            return super().execute(query, params, prepare=prepare, binary=binary)
        with sent_whole(self):
            return super().execute(query, params, prepare=prepare, binary=binary)


async def execute_async(conn: psycopg.AsyncConnection[Any], statement: str,
                        params: dict[str, Any] | None, *,
                        binary: bool = False) -> psycopg.AsyncCursor[Any]:
    """`conn.execute` on an asyncio connection (the local forkserver's supervisor,
    proxy.py), a large statement sent whole. That send holds up the event loop until
    Postgres has read the message, as the nonblocking sends' copying did for longer."""
    if payload_bytes(params) <= LARGE_PARAMS_BYTES:
        return await conn.execute(statement, params, binary=binary)
    pgconn = conn.pgconn
    pgconn.nonblocking = 0
    try:
        cursor = await conn.execute(statement, params, binary=binary)
    finally:
        try:
            pgconn.nonblocking = 1
        except Exception as exc:  # a broken connection: never reused half-configured
            await conn.close()
            raise psycopg.OperationalError(
                f"could not make the connection nonblocking again: {exc}") from exc
    return cursor
