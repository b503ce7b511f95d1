"""One active controller at a time: a Postgres advisory lock held by a session.

The lock lives as long as its connection: if the active controller dies or
loses the database, Postgres releases it and a standby takes over. The
holder checks its connection every turn and stops acting the moment it is
gone, so two controllers never act at once for longer than one turn.
"""

from __future__ import annotations

import logging

from podfn.errors import DatabaseError
from podfn_platform.database import Database, Session

log = logging.getLogger("podfn.controller.leader")

LOCK_KEY = 0x706F64666E01  # "podfn" + 1


class LeadershipLost(DatabaseError):
    """The controller's lock connection is gone; another may be active now."""


class LeaderLock:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._session: Session | None = None

    @property
    def held(self) -> bool:
        return self._session is not None

    def try_acquire(self) -> bool:
        if self._session is not None:
            return True
        try:
            session = self._db.session("podfn-controller-lock")
        except DatabaseError as exc:
            log.warning("cannot reach the database to seek leadership: %s", exc)
            return False
        try:
            [row] = session.execute("SELECT pg_try_advisory_lock(%s) AS ok", (LOCK_KEY,))
        except DatabaseError:
            session.close()
            return False
        if row["ok"]:
            self._session = session
            return True
        session.close()
        return False

    def check(self) -> None:
        """Raise LeadershipLost unless the lock's connection still answers."""
        if self._session is None:
            raise LeadershipLost("not the active controller")
        try:
            self._session.execute("SELECT 1")
        except DatabaseError as exc:
            self.release()
            raise LeadershipLost(f"lost the controller lock's connection: {exc}") from exc

    def release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
