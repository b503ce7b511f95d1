"""One active controller at a time: a Postgres advisory lock held by a session.

The lock lives as long as its connection: if the active controller dies or
loses the database, Postgres releases it and a standby takes over. The
holder checks its connection every turn and stops acting the moment it is
gone, so two controllers never act at once for longer than one turn.
"""

from __future__ import annotations

import contextlib
import logging

import psycopg

from podfn.errors import DatabaseError
from podfn_platform.database import Database, Row

log = logging.getLogger("podfn.controller.leader")

LOCK_KEY = 0x706F64666E01  # "podfn" + 1


class LeadershipLost(DatabaseError):
    """The controller's lock connection is gone; another may be active now."""


class LeaderLock:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: psycopg.Connection[Row] | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return True
        try:
            conn = self._db.connect()
        except DatabaseError as exc:
            log.warning("cannot reach the database to seek leadership: %s", exc)
            return False
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (LOCK_KEY,)).fetchone()
        except psycopg.Error:
            conn.close()
            return False
        if row and row["ok"]:
            self._conn = conn
            return True
        conn.close()
        return False

    def check(self) -> None:
        """Raise LeadershipLost unless the lock's connection still answers."""
        if self._conn is None:
            raise LeadershipLost("not the active controller")
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error as exc:
            self.release()
            raise LeadershipLost(f"lost the controller lock's connection: {exc}") from exc

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
