"""The platform's one door to Postgres.

Everything the API and the controller say to Postgres goes through
`Database`: named queries from the package's `.sql` files, a connection pool,
LISTEN for wake-ups, and psycopg's errors turned into podfn's own.

The pool checks a connection before lending it (a backend killed by an
administrator, a failover or an idle timeout is replaced, not handed out):
by looking at its socket, where such an end has left its message or EOF,
and only then with a round trip (`lendable`); a transaction of several
statements asks the server itself first. A read that still meets a dead
connection is tried once more on a fresh one: reads are safe to repeat; a
lone write is tried again only when the server said it ended the session
(57P01/57P02), which means the statement did not commit.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from podfn.errors import DatabaseError, DatabaseUnavailable
from podfn_runtime import queries as named_queries
from podfn_runtime.sending import (
    LARGE_PARAMS_BYTES,
    PayloadConnection,
    payload_bytes,
    sent_whole,
)

log = logging.getLogger("podfn.database")

Row = dict[str, Any]

_QUERIES: dict[str, str] = {
    **named_queries.load("podfn_platform.sql", "transitions.sql"),
    **named_queries.load("podfn_platform.sql", "queries.sql"),
    **named_queries.load("podfn_platform.sql", "dashboard.sql"),
    **named_queries.load("podfn_platform.sql", "warm.sql"),
}


def translate(exc: BaseException) -> DatabaseError:
    """psycopg's error as podfn's: unreachable vs refused."""
    if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout,
                        psycopg.InterfaceError)):
        return DatabaseUnavailable(f"the database is unavailable: {exc}")
    sqlstate = getattr(exc, "sqlstate", None)
    return DatabaseError(f"the database refused a statement: {exc}", sqlstate=sqlstate)


def is_read(statement: str) -> bool:
    """A statement that changes nothing (safe to run twice): a SELECT without side effects."""
    lines = [ln for ln in statement.lower().splitlines() if not ln.lstrip().startswith("--")]
    text = "\n".join(lines).lstrip()
    return text.startswith("select") and "pg_notify" not in text and "pg_advisory" not in text


_READS = frozenset(name for name, statement in _QUERIES.items() if is_read(statement))


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value)


# The server ended the session (an administrator's pg_terminate_backend, a shutdown,
# another backend's crash) and said so in place of the statement's answer: it did
# not commit, so it may be sent again on another connection.
_ENDED_UNCOMMITTED = frozenset({"57P01", "57P02"})


def lendable(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before lending `conn`, without a round trip for a healthy one.

    An idle connection has nothing to read; one whose backend ended (killed,
    restarted, timed out, failed over) has its FATAL message or EOF waiting, and
    only then is the server asked (psycopg_pool's empty query), which fails on a
    dead one. A backend killed an instant ago may not have written yet: its
    connection is lent, and the statement meets the end as 57P01 (tried again,
    `Database.all`) or inside a transaction (which asks first, `transaction`).
    Issue 12: the empty query was one round trip of the two or three per request.
    """
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    waiting = select.poll()
    waiting.register(conn.fileno(), select.POLLIN)
    if waiting.poll(0):
        psycopg_pool.ConnectionPool.check_connection(conn)


class Transaction:
    """Named queries run on one connection inside one transaction."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    def all(self, name: str, params: dict[str, Any] | None = None, *,
            binary: bool = False) -> list[Row]:
        """`binary` asks Postgres for binary results: bytea arrives as its bytes, not
        as hex text twice its size that Postgres encodes and psycopg decodes."""
        cur = self._conn.execute(_QUERIES[name], params or {}, binary=binary)
        return cur.fetchall() if cur.description else []

    def one(self, name: str, params: dict[str, Any] | None = None, *,
            binary: bool = False) -> Row | None:
        rows = self.all(name, params, binary=binary)
        return rows[0] if rows else None

    def many(self, name: str, params: Sequence[dict[str, Any]]) -> None:
        """The statement once per parameter set (a map's arguments, say); sent whole, as
        PayloadConnection.execute sends a large statement, when they carry over
        LARGE_PARAMS_BYTES between them."""
        whole = sum(map(payload_bytes, params)) > LARGE_PARAMS_BYTES
        with sent_whole(self._conn) if whole else nullcontext(), self._conn.cursor() as cur:
            cur.executemany(_QUERIES[name], params)


class Database:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10,
                 name: str = "podfn") -> None:
        self.url = url
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, timeout=10.0,
            connection_class=PayloadConnection,
            kwargs={"autocommit": True, "row_factory": dict_row, "application_name": name},
            name=name, check=lendable,
        )

    def open(self, wait: bool = True) -> Database:
        try:
            self._pool.open(wait=wait, timeout=10.0)
        except Exception as exc:
            self._pool.close()
            raise translate(exc) from exc
        return self

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Database:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        try:
            with self._asked() as conn, conn.transaction():
                yield Transaction(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise translate(exc) from exc

    @contextmanager
    def _asked(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection the server has just answered on: a transaction is not tried again,
        so it does not start on a backend that was killed an instant ago."""
        for attempt in (1, 2):
            with self._pool.connection() as conn:
                try:
                    psycopg_pool.ConnectionPool.check_connection(conn)
                except psycopg.OperationalError:
                    if attempt == 2:
                        raise
                    continue  # broken: the pool drops it when it comes back
                yield conn
                return

    def all(self, name: str, params: dict[str, Any] | None = None, *,
            binary: bool = False) -> list[Row]:
        """Run one named statement on an autocommit connection, a transaction of its own
        without the BEGIN and COMMIT round trips of `transaction()` (issue 12: two of the
        three round trips a lone statement cost); all its rows (`binary`: as
        Transaction.all).

        Sent once more, on another connection (the pool drops the broken one when it
        comes back), when it cannot take effect twice: any statement the server refused
        by ending its session (57P01 and kin: it did not run), and a read whose
        connection died in any way (it changes nothing). Never more than twice.
        """
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn:
                    cur = conn.execute(_QUERIES[name], params or {}, binary=binary)
                    return cur.fetchall() if cur.description else []
            except psycopg_pool.PoolTimeout as exc:  # (an OperationalError): no second wait
                raise translate(exc) from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                sqlstate = getattr(exc, "sqlstate", None)
                if attempt == 1 and (sqlstate in _ENDED_UNCOMMITTED or name in _READS):
                    log.info("%s lost its session (%s); sending it again", name,
                             sqlstate or exc)
                    continue
                raise translate(exc) from exc
            except psycopg.Error as exc:
                raise translate(exc) from exc
        raise AssertionError("unreachable")

    def one(self, name: str, params: dict[str, Any] | None = None, *,
            binary: bool = False) -> Row | None:
        rows = self.all(name, params, binary=binary)
        return rows[0] if rows else None

    def ping(self) -> None:
        with self.transaction() as tx:
            tx._conn.execute("SELECT 1")

    def connect(self, *, name: str = "podfn-listener") -> psycopg.Connection[Row]:
        """A raw connection outside the pool, for this module's own use (LISTEN)."""
        try:
            return psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                                   application_name=name)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    def session(self, name: str) -> Session:
        """A dedicated connection whose session state matters (advisory locks, migrations)."""
        return Session(self.connect(name=name))


def ensure_database(server_url: str, dbname: str) -> None:
    """Create database `dbname` on the server at `server_url` unless it exists."""
    try:
        with psycopg.connect(server_url, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                 (dbname,)).fetchone()
            if not found:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except psycopg.Error as exc:
        raise translate(exc) from exc


class Session:
    """One connection held on purpose: session-level locks live exactly as long as it does."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    def execute(self, statement: str | bytes, params: Sequence[Any] | dict[str, Any] | None = None,
                ) -> list[Row]:
        """Run raw SQL (a migration script, a lock call); its rows. Errors become podfn's."""
        try:
            cur = self._conn.execute(statement, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc) from exc

    def execute_with_names(self, template: str, *, identifiers: dict[str, str],
                           literals: dict[str, str] | None = None) -> None:
        """Run `template` (no bind parameters) with {name} filled by quoted identifiers/literals.

        For statements that cannot take bind parameters (CREATE ROLE, GRANT ...)
        and name objects that come from settings.
        """
        values: dict[str, sql.Composable] = {k: sql.Identifier(v) for k, v in identifiers.items()}
        values.update({k: sql.Literal(v) for k, v in (literals or {}).items()})
        try:
            statement = sql.SQL(template).format(**values).as_string(self._conn)
            self._conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise translate(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            with self._conn.transaction():
                yield
        except psycopg.Error as exc:
            raise translate(exc) from exc

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# How long a stopping Listener may go unnoticed: its thread waits for notifications
# this long at a time (a wait cannot be woken from another thread; an idle wake-up
# is one poll() and costs nothing), so shutting down a controller or an API
# worker, which stops one each, is not a second longer than it needs to be.
_STOP_CHECK_SECONDS = 0.1


class Listener:
    """LISTEN on channels in a background thread; calls `on_notify(channel, payload)`.

    After (re)connecting it calls `on_reconnect()`, because notifications sent
    while it was disconnected are lost: whoever waits must look again.
    """

    def __init__(self, db: Database, channels: Sequence[str], *,
                 on_notify: Any, on_reconnect: Any) -> None:
        self._db = db
        self._channels = list(channels)
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podfn-listener", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with self._db.connect() as conn:
                    for channel in self._channels:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.connected.set()
                    backoff = 0.1
                    self._on_reconnect()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=_STOP_CHECK_SECONDS):
                            self._on_notify(note.channel, note.payload)
            except (psycopg.Error, DatabaseError) as exc:
                self.connected.clear()
                if self._stop.is_set():
                    return
                log.warning("listener lost its connection (%s); reconnecting in %.1fs",
                            exc, backoff)
                self._on_reconnect()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.connected.clear()
