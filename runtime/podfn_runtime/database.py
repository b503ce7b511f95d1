"""The runtime's one connection to Postgres.

The runtime is the only writer of results, and it writes them straight to
Postgres (no queue, no callback to the API). Every write is a guarded
transition from transitions.sql, so a stale attempt's write changes nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from podfn_runtime.queries import transitions


class RuntimeDatabaseError(Exception):
    """The runtime could not reach or write to Postgres: it cannot do its job."""


class RuntimeDatabase:
    def __init__(self, url: str) -> None:
        self._queries = transitions()
        try:
            self._conn: psycopg.Connection[dict[str, Any]] = psycopg.connect(
                url, autocommit=True, row_factory=dict_row, application_name="podfn-runtime"
            )
        except psycopg.Error as exc:
            raise RuntimeDatabaseError(f"cannot connect to the database: {exc}") from exc

    def transition(self, name: str, **params: Any) -> dict[str, Any] | None:
        """Run one guarded transition; the row it returns, or None if it did not apply."""
        try:
            return self._conn.execute(self._queries[name], params).fetchone()
        except psycopg.Error as exc:
            raise RuntimeDatabaseError(f"{name} failed: {exc}") from exc

    def close(self) -> None:
        self._conn.close()
