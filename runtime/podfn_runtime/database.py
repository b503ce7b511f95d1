"""The runtime's one connection to Postgres, and every statement it sends.

The runtime writes results straight to Postgres (no queue, no callback to
the API), but it connects as the runtime role, which may only execute the
runtime protocol's functions (protocol.sql): each checks the attempt's
secret, so the code of a call can touch its own call and nothing else, and
a stale attempt's write changes nothing. The connection keeps no session
state and never prepares statements server-side, so it works through
PgBouncer in transaction pooling mode.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from podfn_runtime.queries import protocol


class RuntimeDatabaseError(Exception):
    """The runtime could not reach or write to Postgres: it cannot do its job."""


class RuntimeDatabase:
    def __init__(self, url: str, secret: str) -> None:
        self._queries = protocol()
        self._secret = secret
        try:
            self._conn: psycopg.Connection[dict[str, Any]] = psycopg.connect(
                url, autocommit=True, row_factory=dict_row, application_name="podfn-runtime",
                prepare_threshold=None,
            )
        except psycopg.Error as exc:
            raise RuntimeDatabaseError(f"cannot connect to the database: {exc}") from exc

    def transition(self, name: str, **params: Any) -> dict[str, Any] | None:
        """Call one protocol function with this attempt's secret (unless `secret=` is given);
        its row, or None if it did not apply."""
        try:
            row = self._conn.execute(self._queries[name],
                                     {"secret": self._secret, **params}).fetchone()
        except psycopg.Error as exc:
            raise RuntimeDatabaseError(f"{name} failed: {exc}") from exc
        if name == "progress":
            return row if row and row["written"] else None
        return row

    def close(self) -> None:
        self._conn.close()
