"""Schema migrations: numbered `.sql` files applied in order, once each.

Each file runs in its own transaction together with its row in
`podfn_migrations`, under an advisory lock so two processes migrating at
once (two API replicas starting) apply each file exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from podfn.errors import DatabaseError
from podfn_platform.database import Database, translate

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
    try:
        with db.connect(autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS podfn_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                done = {r["version"] for r in conn.execute("SELECT version FROM podfn_migrations")}
                for migration in available():
                    if migration.version in done:
                        continue
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "INSERT INTO podfn_migrations (version, name) VALUES (%s, %s)",
                            (migration.version, migration.name),
                        )
                    applied_now.append(migration)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return applied_now


def pending(db: Database) -> list[Migration]:
    try:
        with db.connect() as conn:
            exists = conn.execute("SELECT to_regclass('podfn_migrations') AS t").fetchone()
            done: set[int] = set()
            if exists and exists["t"]:
                done = {r["version"] for r in conn.execute("SELECT version FROM podfn_migrations")}
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return [m for m in available() if m.version not in done]
