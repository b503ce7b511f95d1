"""Schema migrations: numbered `.sql` files applied in order, once each.

Each file runs in its own transaction together with its row in
`podfn_migrations`, under an advisory lock so two processes migrating at
once (two API replicas starting) apply each file exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from podfn.errors import DatabaseError
from podfn_platform.database import Database

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_LOCK_KEY = 0x706F64666E  # "podfn"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in resources.files("podfn_platform.sql.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"two migrations share a number: {versions}")
    return found


def apply(db: Database) -> list[Migration]:
    """Apply every migration not yet applied; the ones applied now."""
    applied_now = []
    with db.session("podfn-migrate") as session:
        session.execute(
            "CREATE TABLE IF NOT EXISTS podfn_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        session.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            done = {r["version"] for r in session.execute("SELECT version FROM podfn_migrations")}
            for migration in available():
                if migration.version in done:
                    continue
                with session.transaction():
                    session.execute(migration.sql.encode())
                    session.execute("INSERT INTO podfn_migrations (version, name) VALUES (%s, %s)",
                                    (migration.version, migration.name))
                applied_now.append(migration)
        finally:
            session.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def pending(db: Database) -> list[Migration]:
    with db.session("podfn-migrate") as session:
        [exists] = session.execute("SELECT to_regclass('podfn_migrations') AS t")
        done: set[int] = set()
        if exists["t"]:
            done = {r["version"] for r in session.execute("SELECT version FROM podfn_migrations")}
    return [m for m in available() if m.version not in done]
