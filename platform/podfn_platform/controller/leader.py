"""One active controller at a time: a Postgres advisory lock held by a session.

The lock lives as long as its connection: if the active controller dies,
Postgres releases it and a standby takes over. The holder checks its
connection every turn; if only the connection died (a killed backend, a
network blip) it re-takes the free lock on a new one, and it stops acting
the moment another controller holds it, so two controllers never act at once
for longer than one turn.
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
        """Return while this controller holds the lock; re-take it if its session died.

        A killed lock connection alone does not cost leadership: if the lock
        is free again it is re-taken on a new session. LeadershipLost only when
        another controller holds it now; DatabaseUnavailable when the database
        cannot be asked (the caller retries; it must not act meanwhile).
        """
        if self._session is not None:
            try:
                self._session.execute("SELECT 1")
                return
            except DatabaseError as exc:
                log.warning("the controller lock's connection is gone (%s); re-taking the lock",
                            exc)
                self.release()
        session = self._db.session("podfn-controller-lock")  # DatabaseError: retried by the caller
        try:
            [row] = session.execute("SELECT pg_try_advisory_lock(%s) AS ok", (LOCK_KEY,))
        except DatabaseError:
            session.close()
            raise
        if not row["ok"]:
            session.close()
            raise LeadershipLost("another controller holds the controller lock now")
        log.info("re-took the controller lock on a new connection")
        self._session = session

    def release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
